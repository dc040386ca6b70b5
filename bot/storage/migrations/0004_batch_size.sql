-- The size of a job's batch as a column (it was the "count" entry of the sources JSON).
ALTER TABLE jobs ADD COLUMN batch_size INTEGER NOT NULL DEFAULT 1;
UPDATE jobs SET batch_size = CAST(json_extract(sources, '$.count') AS INTEGER)
    WHERE json_extract(sources, '$.count') IS NOT NULL;
UPDATE jobs SET sources = json_remove(sources, '$.count')
    WHERE json_extract(sources, '$.count') IS NOT NULL;
