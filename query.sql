-- The analysts' two questions for one month. Run with psql, setting the source:
--   psql "$DATABASE_URL" -v source_id=yellow/2021-03 -f query.sql
-- `tripflow query` reads the answers the load materialized for the current version (the last
-- query below). The first two recompute them from the rows in tripflow.trips, as the views
-- tripflow.monthly_avg_speed and tripflow.weekly_top5_slow_pickups do.

-- (1) Average speed in mph over all valid trips of the month (distance > 0 and duration > 0):
-- total distance / total hours, not the mean of the trips' speeds.
SELECT sum(trip_distance) / (sum(duration_s) / 3600.0) AS avg_speed_mph
FROM tripflow.trips
WHERE source_id = :'source_id' AND trip_distance > 0 AND duration_s > 0;

-- (2) For each ISO week of the month, the 5 pickup locations with the most trips slower than (1);
-- ties go to the lower location ID. The average is computed once (a materialized CTE), never per row.
WITH avg AS MATERIALIZED (
    SELECT sum(trip_distance) / (sum(duration_s) / 3600.0) AS avg_speed_mph
    FROM tripflow.trips
    WHERE source_id = :'source_id' AND trip_distance > 0 AND duration_s > 0
), slow AS (
    SELECT t.pickup_week AS week, t.pu_location_id, count(*) AS slow_trips
    FROM tripflow.trips t CROSS JOIN avg
    WHERE t.source_id = :'source_id' AND t.trip_distance > 0 AND t.duration_s > 0
      AND t.speed_mph < avg.avg_speed_mph AND t.pu_location_id IS NOT NULL
    GROUP BY t.pickup_week, t.pu_location_id
), ranked AS (
    SELECT week, pu_location_id, slow_trips,
           row_number() OVER (PARTITION BY week ORDER BY slow_trips DESC, pu_location_id) AS rank
    FROM slow
)
SELECT r.week, r.rank, r.pu_location_id, r.slow_trips, z.borough AS pu_borough, z.zone AS pu_zone
FROM ranked r
LEFT JOIN tripflow.zones z ON z.location_id = r.pu_location_id
WHERE r.rank <= 5
ORDER BY r.week, r.rank;

-- (3) The same answers as the load materialized them, for the current version, and the versions
-- kept (`current`, `previous` ones restorable, `dropped` ones gone by retention).
SELECT v.version, v.state, v.created_at, a.rows_loaded, a.valid_trips, a.avg_speed_mph, a.slow_trips
FROM tripflow.versions v
LEFT JOIN tripflow.monthly_answers a USING (source_id, version)
WHERE v.source_id = :'source_id' AND v.state IN ('current', 'previous', 'dropped')
ORDER BY v.version;

SELECT w.week, w.rank, w.pu_location_id, w.slow_trips, z.borough AS pu_borough, z.zone AS pu_zone
FROM tripflow.versions v
JOIN tripflow.weekly_slow_pickups w USING (source_id, version)
LEFT JOIN tripflow.zones z ON z.location_id = w.pu_location_id
WHERE v.source_id = :'source_id' AND v.current
ORDER BY w.week, w.rank;
