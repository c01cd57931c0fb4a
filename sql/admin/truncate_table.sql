TRUNCATE TABLE IF EXISTS {table:Identifier}
