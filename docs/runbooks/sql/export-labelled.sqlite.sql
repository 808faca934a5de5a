-- Recent labelled deliveries as a training file in the delivery spec's columns (SQLite):
-- the inputs of the latest prediction of each order of the last 28 days, plus its actual.
--   sqlite3 -header -csv intellilog.db < docs/runbooks/sql/export-labelled.sqlite.sql > data/recent.csv
WITH latest AS (
    SELECT p.*,
           ROW_NUMBER() OVER (PARTITION BY p.tenant, p.order_id ORDER BY p.created_at DESC) AS rn
    FROM predictions p
    WHERE p.order_id IS NOT NULL
      AND p.created_at >= strftime('%s', 'now') - 28 * 86400
)
SELECT l.order_id,
       json_extract(l.inputs, '$.pickup_lat') AS pickup_lat,
       json_extract(l.inputs, '$.pickup_lon') AS pickup_lon,
       json_extract(l.inputs, '$.dropoff_lat') AS dropoff_lat,
       json_extract(l.inputs, '$.dropoff_lon') AS dropoff_lon,
       json_extract(l.inputs, '$.created_at') AS created_at,
       json_extract(l.inputs, '$.vehicle_type') AS vehicle_type,
       json_extract(l.inputs, '$.weather') AS weather,
       json_extract(l.inputs, '$.zone') AS zone,
       json_extract(l.inputs, '$.items_count') AS items_count,
       json_extract(l.inputs, '$.prep_minutes') AS prep_minutes,
       f.actual_minutes
FROM latest l
JOIN feedback f ON f.tenant = l.tenant AND f.order_id = l.order_id
WHERE l.rn = 1
ORDER BY l.created_at;
