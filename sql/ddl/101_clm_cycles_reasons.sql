-- Stores created before the shadow test recorded its reasoning get the new columns.
ALTER TABLE clm_cycles
    ADD COLUMN IF NOT EXISTS reasons Map(LowCardinality(String), String),
    ADD COLUMN IF NOT EXISTS reference_version String
