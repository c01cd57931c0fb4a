SELECT *
FROM trades FINAL
WHERE trade_id = {trade_id:String}
