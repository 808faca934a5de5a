-- Recent labelled deliveries as a training file in the delivery spec's columns
-- (PostgreSQL): the inputs of the latest prediction of each order of the last 28 days,
-- plus its actual.
--   psql "$DATABASE_URL" --csv -f docs/runbooks/sql/export-labelled.postgres.sql > data/recent.csv
WITH latest AS (
    SELECT DISTINCT ON (p.tenant, p.order_id) p.*
    FROM predictions p
    WHERE p.order_id IS NOT NULL
      AND p.created_at >= extract(epoch FROM now()) - 28 * 86400
    ORDER BY p.tenant, p.order_id, p.created_at DESC
)
SELECT l.order_id,
       l.inputs::jsonb ->> 'pickup_lat' AS pickup_lat,
       l.inputs::jsonb ->> 'pickup_lon' AS pickup_lon,
       l.inputs::jsonb ->> 'dropoff_lat' AS dropoff_lat,
       l.inputs::jsonb ->> 'dropoff_lon' AS dropoff_lon,
       l.inputs::jsonb ->> 'created_at' AS created_at,
       l.inputs::jsonb ->> 'vehicle_type' AS vehicle_type,
       l.inputs::jsonb ->> 'weather' AS weather,
       l.inputs::jsonb ->> 'zone' AS zone,
       l.inputs::jsonb ->> 'items_count' AS items_count,
       l.inputs::jsonb ->> 'prep_minutes' AS prep_minutes,
       f.actual_minutes
FROM latest l
JOIN feedback f ON f.tenant = l.tenant AND f.order_id = l.order_id
ORDER BY l.created_at;
