-- The size of a job's batch as a column (it was the "count" entry of the sources JSON).
ALTER TABLE jobs ADD COLUMN batch_size INTEGER NOT NULL DEFAULT 1;
UPDATE jobs SET batch_size = trunc((sources::jsonb ->> 'count')::numeric)::integer,
                sources = (sources::jsonb - 'count')::text
    WHERE sources::jsonb ->> 'count' IS NOT NULL;
