SELECT min(end) AS first_end
FROM bars FINAL
