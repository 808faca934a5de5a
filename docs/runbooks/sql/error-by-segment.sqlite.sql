-- Where the error is (SQLite): MAE and bias of the last 24 hours' completed deliveries
-- per zone, vehicle type and weather, worst first (segments with at least 20 rows).
--   sqlite3 -header -column intellilog.db < docs/runbooks/sql/error-by-segment.sqlite.sql
WITH latest AS (
    SELECT p.*,
           ROW_NUMBER() OVER (PARTITION BY p.tenant, p.order_id ORDER BY p.created_at DESC) AS rn
    FROM predictions p
    WHERE p.order_id IS NOT NULL
)
SELECT l.model_version,
       json_extract(l.inputs, '$.zone') AS zone,
       json_extract(l.inputs, '$.vehicle_type') AS vehicle_type,
       json_extract(l.inputs, '$.weather') AS weather,
       COUNT(*) AS n,
       ROUND(AVG(ABS(l.eta - f.actual_minutes)), 2) AS mae_minutes,
       ROUND(AVG(l.eta - f.actual_minutes), 2) AS bias_minutes
FROM latest l
JOIN feedback f ON f.tenant = l.tenant AND f.order_id = l.order_id
WHERE l.rn = 1
  AND f.completed_at >= strftime('%s', 'now') - 86400
GROUP BY 1, 2, 3, 4
HAVING COUNT(*) >= 20
ORDER BY mae_minutes DESC
LIMIT 20;
