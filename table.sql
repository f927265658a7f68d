-- tripflow's database schema. Applied by the load stage before every load; every statement is
-- idempotent, so applying it again is harmless. Analysts query tripflow.trips and the two views.

CREATE SCHEMA IF NOT EXISTS tripflow;

-- One row per curated trip. source_id ('yellow/2021-03') names the file the row came from: a rerun
-- of that source replaces exactly its rows, in one transaction.
CREATE TABLE IF NOT EXISTS tripflow.trips (
    source_id            text             NOT NULL,
    vendor_id            integer,
    pickup_at            timestamp        NOT NULL,
    dropoff_at           timestamp        NOT NULL,
    passenger_count      integer,
    trip_distance        double precision,
    ratecode_id          integer,
    pu_location_id       integer,
    do_location_id       integer,
    payment_type         integer,
    fare_amount          double precision,
    tip_amount           double precision,
    total_amount         double precision,
    congestion_surcharge double precision,
    airport_fee          double precision,
    duration_s           double precision NOT NULL CHECK (duration_s > 0),
    speed_mph            double precision,
    pickup_date          date             NOT NULL,
    pickup_week          integer          NOT NULL CHECK (pickup_week BETWEEN 1 AND 53)
);

CREATE INDEX IF NOT EXISTS trips_source_id_idx ON tripflow.trips (source_id);
CREATE INDEX IF NOT EXISTS trips_pickup_date_idx ON tripflow.trips (pickup_date);

-- One row per load: what was loaded, from which files, and what it replaced.
CREATE TABLE IF NOT EXISTS tripflow.load_runs (
    run_id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source_id     text        NOT NULL,
    manifest_key  text        NOT NULL,
    manifest_md5  text        NOT NULL,
    rows_curated  bigint      NOT NULL,
    rows_loaded   bigint      NOT NULL,
    rows_replaced bigint      NOT NULL,
    started_at    timestamptz NOT NULL,
    finished_at   timestamptz NOT NULL DEFAULT now()
);

-- Question 1: the average speed of each month, total distance over total time, over valid trips
-- (distance > 0 and duration > 0).
CREATE OR REPLACE VIEW tripflow.monthly_avg_speed AS
SELECT source_id,
       sum(trip_distance) / (sum(duration_s) / 3600.0) AS avg_speed_mph,
       count(*)                                         AS valid_trips
FROM tripflow.trips
WHERE trip_distance > 0 AND duration_s > 0
GROUP BY source_id;

-- Question 2: for each ISO week of the month, the 5 pickup locations with the most trips slower
-- than the month's average speed. Ties are broken by location ID so the answer is deterministic.
CREATE OR REPLACE VIEW tripflow.weekly_top5_slow_pickups AS
WITH slow AS (
    SELECT t.source_id, t.pickup_week AS week, t.pu_location_id, count(*) AS slow_trips
    FROM tripflow.trips t
    JOIN tripflow.monthly_avg_speed a USING (source_id)
    WHERE t.trip_distance > 0 AND t.duration_s > 0 AND t.speed_mph < a.avg_speed_mph
    GROUP BY t.source_id, t.pickup_week, t.pu_location_id
), ranked AS (
    SELECT slow.*,
           row_number() OVER (PARTITION BY source_id, week ORDER BY slow_trips DESC, pu_location_id) AS rank
    FROM slow
)
SELECT source_id, week, rank, pu_location_id, slow_trips
FROM ranked
WHERE rank <= 5;
