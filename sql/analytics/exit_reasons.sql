-- How trades ended.
SELECT exit_reason, count() AS trades, round(count() / sum(count()) OVER (), 4) AS share,
       round(sum(net_pnl), 4) AS total_net_pnl
FROM trades FINAL
WHERE status = 'closed'
GROUP BY exit_reason
ORDER BY trades DESC
