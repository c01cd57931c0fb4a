-- One line about the whole run: its event-time span (bars), symbols, trades, net PnL, dead
-- letters and what learning did (the report's title block).
SELECT
    (SELECT count() FROM bars FINAL) AS bars,
    (SELECT min(start) FROM bars FINAL) AS first_bar,
    (SELECT max(end) FROM bars FINAL) AS last_bar,
    (SELECT arraySort(groupUniqArray(symbol)) FROM bars FINAL) AS symbols,
    (SELECT count() FROM trades FINAL) AS trades,
    (SELECT countIf(status = 'closed') FROM trades FINAL) AS closed_trades,
    (SELECT countIf(status = 'closed' AND net_pnl > 0) FROM trades FINAL) AS winning_trades,
    (SELECT round(sumIf(net_pnl, status = 'closed'), 4) FROM trades FINAL) AS net_pnl,
    (SELECT count() FROM dead_letters FINAL) AS dead_letters,
    (SELECT count() FROM rl_updates FINAL) AS rl_updates,
    (SELECT count() FROM clm_cycles FINAL) AS clm_cycles
