-- The analysts' two questions over tripflow.trips, for one month. Run with psql, setting the source:
--   psql "$DATABASE_URL" -v source_id=yellow/2021-03 -f query.sql
-- The same logic ships as the views tripflow.monthly_avg_speed and tripflow.weekly_top5_slow_pickups.

-- (1) Average speed in mph over all valid trips of the month: total distance / total hours.
SELECT sum(trip_distance) / (sum(duration_s) / 3600.0) AS avg_speed_mph
FROM tripflow.trips
WHERE source_id = :'source_id' AND trip_distance > 0 AND duration_s > 0;

-- (2) For each ISO week of the month, the 5 pickup locations with the most trips slower than (1).
WITH avg AS (
    SELECT sum(trip_distance) / (sum(duration_s) / 3600.0) AS avg_speed_mph
    FROM tripflow.trips
    WHERE source_id = :'source_id' AND trip_distance > 0 AND duration_s > 0
), slow AS (
    SELECT t.pickup_week AS week, t.pu_location_id, count(*) AS slow_trips
    FROM tripflow.trips t, avg
    WHERE t.source_id = :'source_id' AND t.trip_distance > 0 AND t.duration_s > 0
      AND t.speed_mph < avg.avg_speed_mph
    GROUP BY t.pickup_week, t.pu_location_id
), ranked AS (
    SELECT week, pu_location_id, slow_trips,
           row_number() OVER (PARTITION BY week ORDER BY slow_trips DESC, pu_location_id) AS rank
    FROM slow
)
SELECT week, rank, pu_location_id, slow_trips
FROM ranked
WHERE rank <= 5
ORDER BY week, rank;
