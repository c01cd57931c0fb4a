SELECT model, version, stage, sha256, feature_set, data_from, data_to, metrics, created_at,
       promoted_at
FROM model_registry FINAL
ORDER BY model, version
