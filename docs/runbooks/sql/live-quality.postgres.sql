-- Live quality per model version and arm (PostgreSQL): deliveries completed in the last
-- 24 hours, joined to the latest prediction logged for the same order. Accuracy uses
-- the delivery spec's tolerance, 5 minutes: change the 5.0 for another spec.
--   psql "$DATABASE_URL" -f docs/runbooks/sql/live-quality.postgres.sql
WITH latest AS (
    SELECT DISTINCT ON (p.tenant, p.order_id) p.*
    FROM predictions p
    WHERE p.order_id IS NOT NULL
    ORDER BY p.tenant, p.order_id, p.created_at DESC
)
SELECT l.model_version,
       l.arm,
       COUNT(*) AS n,
       round(AVG(abs(l.eta - f.actual_minutes))::numeric, 2) AS mae_minutes,
       round(AVG(l.eta - f.actual_minutes)::numeric, 2) AS bias_minutes,
       round(AVG(CASE WHEN abs(l.eta - f.actual_minutes) <= 5.0 THEN 1.0 ELSE 0.0 END), 3) AS accuracy,
       round(AVG(CASE WHEN f.actual_minutes BETWEEN l.p10 AND l.p90 THEN 1.0 ELSE 0.0 END), 3) AS coverage
FROM latest l
JOIN feedback f ON f.tenant = l.tenant AND f.order_id = l.order_id
WHERE f.completed_at >= extract(epoch FROM now()) - 86400
GROUP BY l.model_version, l.arm
ORDER BY l.model_version, l.arm;
