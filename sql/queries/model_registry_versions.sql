-- The latest recorded stage of every version of one model (what `python -m cli.registry repair`
-- rebuilds stages.json from).
SELECT version, stage, promoted_at, updated_at
FROM model_registry FINAL
WHERE model = {model:String}
ORDER BY version
