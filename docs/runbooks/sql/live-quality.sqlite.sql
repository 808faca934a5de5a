-- Live quality per model version and arm (SQLite): deliveries completed in the last
-- 24 hours, joined to the latest prediction logged for the same order. Accuracy uses
-- the delivery spec's tolerance, 5 minutes: change the two 5.0 for another spec.
--   sqlite3 -header -column intellilog.db < docs/runbooks/sql/live-quality.sqlite.sql
WITH latest AS (
    SELECT p.*,
           ROW_NUMBER() OVER (PARTITION BY p.tenant, p.order_id ORDER BY p.created_at DESC) AS rn
    FROM predictions p
    WHERE p.order_id IS NOT NULL
)
SELECT l.model_version,
       l.arm,
       COUNT(*) AS n,
       ROUND(AVG(ABS(l.eta - f.actual_minutes)), 2) AS mae_minutes,
       ROUND(AVG(l.eta - f.actual_minutes), 2) AS bias_minutes,
       ROUND(AVG(CASE WHEN ABS(l.eta - f.actual_minutes) <= 5.0 THEN 1.0 ELSE 0.0 END), 3) AS accuracy,
       ROUND(AVG(CASE WHEN f.actual_minutes BETWEEN l.p10 AND l.p90 THEN 1.0 ELSE 0.0 END), 3) AS coverage
FROM latest l
JOIN feedback f ON f.tenant = l.tenant AND f.order_id = l.order_id
WHERE l.rn = 1
  AND f.completed_at >= strftime('%s', 'now') - 86400
GROUP BY l.model_version, l.arm
ORDER BY l.model_version, l.arm;
