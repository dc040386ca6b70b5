-- Batches: /imagine count:N makes N jobs that share one message and one grid image.
ALTER TABLE jobs ADD COLUMN batch_id BIGINT;
ALTER TABLE jobs ADD COLUMN batch_index INTEGER;
CREATE INDEX jobs_batch ON jobs(batch_id);
