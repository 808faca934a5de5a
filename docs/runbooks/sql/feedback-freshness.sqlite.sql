-- Feedback freshness per tenant, and how many recent predictions got an actual (SQLite).
--   sqlite3 -header -column intellilog.db < docs/runbooks/sql/feedback-freshness.sqlite.sql
SELECT tenant,
       COUNT(*) AS feedback_rows,
       SUM(CASE WHEN received_at >= strftime('%s', 'now') - 3600 THEN 1 ELSE 0 END) AS received_1h,
       SUM(CASE WHEN received_at >= strftime('%s', 'now') - 86400 THEN 1 ELSE 0 END) AS received_24h,
       datetime(MAX(received_at), 'unixepoch') AS newest_received_utc,
       ROUND((strftime('%s', 'now') - MAX(received_at)) / 60.0, 1) AS minutes_since_newest
FROM feedback
GROUP BY tenant
ORDER BY tenant;

SELECT p.tenant,
       COUNT(*) AS predictions_24h,
       SUM(CASE WHEN f.order_id IS NOT NULL THEN 1 ELSE 0 END) AS with_feedback,
       SUM(CASE WHEN p.order_id IS NULL THEN 1 ELSE 0 END) AS without_order_id
FROM predictions p
LEFT JOIN feedback f ON f.tenant = p.tenant AND f.order_id = p.order_id
WHERE p.created_at >= strftime('%s', 'now') - 86400
GROUP BY p.tenant
ORDER BY p.tenant;
