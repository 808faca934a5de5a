-- Where the error is (PostgreSQL): MAE and bias of the last 24 hours' completed deliveries
-- per zone, vehicle type and weather, worst first (segments with at least 20 rows).
--   psql "$DATABASE_URL" -f docs/runbooks/sql/error-by-segment.postgres.sql
WITH latest AS (
    SELECT DISTINCT ON (p.tenant, p.order_id) p.*
    FROM predictions p
    WHERE p.order_id IS NOT NULL
    ORDER BY p.tenant, p.order_id, p.created_at DESC
)
SELECT l.model_version,
       l.inputs::jsonb ->> 'zone' AS zone,
       l.inputs::jsonb ->> 'vehicle_type' AS vehicle_type,
       l.inputs::jsonb ->> 'weather' AS weather,
       COUNT(*) AS n,
       round(AVG(abs(l.eta - f.actual_minutes))::numeric, 2) AS mae_minutes,
       round(AVG(l.eta - f.actual_minutes)::numeric, 2) AS bias_minutes
FROM latest l
JOIN feedback f ON f.tenant = l.tenant AND f.order_id = l.order_id
WHERE f.completed_at >= extract(epoch FROM now()) - 86400
GROUP BY 1, 2, 3, 4
HAVING COUNT(*) >= 20
ORDER BY mae_minutes DESC
LIMIT 20;
