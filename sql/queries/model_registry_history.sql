-- The stage changes of one model (one version, or all with version = '') the table still holds
-- row by row: a ReplacingMergeTree keeps only the latest row per version once its parts merge,
-- so older changes may be gone (stages.json keeps every change with who made it).
SELECT DISTINCT version, stage, promoted_at, updated_at
FROM model_registry
WHERE model = {model:String} AND ({version:String} = '' OR version = {version:String})
ORDER BY updated_at, version
