-- Every model version the registry knows, with its stage history collapsed to the latest
-- (ReplacingMergeTree by updated_at; read with FINAL). Artifacts live on disk under
-- QT_REGISTRY_DIR; sha256 is the digest the loader verifies.
CREATE TABLE IF NOT EXISTS model_registry
(
    model        LowCardinality(String),
    version      String,
    stage        LowCardinality(String),
    sha256       String,
    feature_set  LowCardinality(String),
    data_from    Nullable(DateTime64(3, 'UTC')),
    data_to      Nullable(DateTime64(3, 'UTC')),
    metrics      Map(LowCardinality(String), Float64),
    created_at   DateTime64(3, 'UTC'),
    promoted_at  Nullable(DateTime64(3, 'UTC')),
    updated_at   DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY (model, version)
