-- Feedback freshness per tenant, and how many recent predictions got an actual (PostgreSQL).
--   psql "$DATABASE_URL" -f docs/runbooks/sql/feedback-freshness.postgres.sql
SELECT tenant,
       COUNT(*) AS feedback_rows,
       COUNT(*) FILTER (WHERE received_at >= extract(epoch FROM now()) - 3600) AS received_1h,
       COUNT(*) FILTER (WHERE received_at >= extract(epoch FROM now()) - 86400) AS received_24h,
       to_timestamp(MAX(received_at)) AS newest_received,
       round(((extract(epoch FROM now()) - MAX(received_at)) / 60.0)::numeric, 1) AS minutes_since_newest
FROM feedback
GROUP BY tenant
ORDER BY tenant;

SELECT p.tenant,
       COUNT(*) AS predictions_24h,
       COUNT(f.order_id) AS with_feedback,
       COUNT(*) FILTER (WHERE p.order_id IS NULL) AS without_order_id
FROM predictions p
LEFT JOIN feedback f ON f.tenant = p.tenant AND f.order_id = p.order_id
WHERE p.created_at >= extract(epoch FROM now()) - 86400
GROUP BY p.tenant
ORDER BY p.tenant;
