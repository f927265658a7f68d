-- tripflow's schema, version 1: trips partitioned by source, one table per loaded version, the
-- answers materialized per version. Applied once by db::migrate (recorded in
-- tripflow.schema_migrations); later changes go in new numbered files, never edits to this one.

CREATE SCHEMA IF NOT EXISTS tripflow;

-- Databases loaded before migrations existed hold an unpartitioned tripflow.trips (from the old
-- table.sql). Its rows are kept aside, never dropped: reload those months to version them.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE n.nspname = 'tripflow' AND c.relname = 'trips' AND c.relkind = 'r') THEN
        DROP VIEW IF EXISTS tripflow.weekly_top5_slow_pickups;
        DROP VIEW IF EXISTS tripflow.monthly_avg_speed;
        ALTER TABLE tripflow.trips RENAME TO trips_unversioned;
        ALTER INDEX IF EXISTS tripflow.trips_source_id_idx RENAME TO trips_unversioned_source_id_idx;
        ALTER INDEX IF EXISTS tripflow.trips_pickup_date_idx RENAME TO trips_unversioned_pickup_date_idx;
    END IF;
END
$$;

-- One row per curated trip. source_id ('yellow/2021-03') names the file the row came from. Each
-- partition is one loaded version of one source (tripflow.versions says which); a load builds the
-- next version as its own table and swaps it in, so readers see the old version or the new one.
CREATE TABLE tripflow.trips (
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
    duration_s           double precision NOT NULL CONSTRAINT trips_duration_s_check CHECK (duration_s > 0),
    speed_mph            double precision,
    pickup_date          date             NOT NULL,
    pickup_week          integer          NOT NULL CONSTRAINT trips_pickup_week_check CHECK (pickup_week BETWEEN 1 AND 53)
) PARTITION BY LIST (source_id);

-- Partitioned indexes: a load builds the same index on its new table, which ATTACH then adopts.
CREATE INDEX trips_pickup_date_idx ON tripflow.trips (pickup_date);

-- Every version of every source. state: staging (table being built by a live session), staged
-- (complete, not yet swapped in), current (attached), previous (detached, kept for restore),
-- dropped (table removed by retention; answers kept), failed (refused or abandoned; table removed).
CREATE TABLE tripflow.versions (
    source_id       text        NOT NULL,
    version         integer     NOT NULL CHECK (version > 0),
    state           text        NOT NULL CHECK (state IN ('staging', 'staged', 'current', 'previous', 'dropped', 'failed')),
    current         boolean     GENERATED ALWAYS AS (state = 'current') STORED,
    partition_table text        NOT NULL UNIQUE,
    rows_loaded     bigint,
    source_md5      text,
    manifest_key    text,
    manifest_md5    text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    made_current_at timestamptz,
    retired_at      timestamptz,
    PRIMARY KEY (source_id, version)
);
CREATE UNIQUE INDEX versions_one_current_per_source ON tripflow.versions (source_id) WHERE current;

-- Question 1 per version, computed from the version's own table when it was built.
CREATE TABLE tripflow.monthly_answers (
    source_id      text             NOT NULL,
    version        integer          NOT NULL,
    rows_loaded    bigint           NOT NULL,
    valid_trips    bigint           NOT NULL,
    total_distance double precision,
    total_hours    double precision,
    avg_speed_mph  double precision,
    slow_trips     bigint           NOT NULL,
    PRIMARY KEY (source_id, version),
    FOREIGN KEY (source_id, version) REFERENCES tripflow.versions ON DELETE CASCADE
);

-- Question 2 per version: each ISO week's 5 pickup locations with the most slow trips.
CREATE TABLE tripflow.weekly_slow_pickups (
    source_id      text    NOT NULL,
    version        integer NOT NULL,
    week           integer NOT NULL,
    rank           bigint  NOT NULL CHECK (rank BETWEEN 1 AND 5),
    pu_location_id integer NOT NULL,
    slow_trips     bigint  NOT NULL,
    PRIMARY KEY (source_id, version, week, rank),
    FOREIGN KEY (source_id, version) REFERENCES tripflow.versions ON DELETE CASCADE
);

-- One row per load attempt that swapped a version in: what was loaded, from which files, what it replaced.
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
ALTER TABLE tripflow.load_runs ADD COLUMN IF NOT EXISTS version integer;

-- The views recompute the answers from tripflow.trips for ad-hoc SQL; tripflow query and the run
-- summary read the materialized tables instead. A test keeps the two in agreement.

-- Question 1: total distance over total time, over valid trips (distance > 0 and duration > 0).
CREATE VIEW tripflow.monthly_avg_speed AS
SELECT source_id,
       sum(trip_distance) / (sum(duration_s) / 3600.0) AS avg_speed_mph,
       count(*)                                         AS valid_trips
FROM tripflow.trips
WHERE trip_distance > 0 AND duration_s > 0
GROUP BY source_id;

-- Question 2: for each ISO week, the 5 pickup locations with the most trips slower than the
-- month's average; ties go to the lower location ID. The average is a window aggregate over the
-- source (computed once per source, never once per row), and a filter on source_id reaches the
-- partitions, so querying one month reads one partition.
CREATE VIEW tripflow.weekly_top5_slow_pickups AS
WITH valid AS (
    SELECT source_id, pickup_week, pu_location_id, speed_mph,
           sum(trip_distance) OVER month / (sum(duration_s) OVER month / 3600.0) AS avg_speed_mph
    FROM tripflow.trips
    WHERE trip_distance > 0 AND duration_s > 0
    WINDOW month AS (PARTITION BY source_id)
), slow AS (
    SELECT source_id, pickup_week AS week, pu_location_id, count(*) AS slow_trips
    FROM valid
    WHERE speed_mph < avg_speed_mph AND pu_location_id IS NOT NULL
    GROUP BY source_id, pickup_week, pu_location_id
), ranked AS (
    SELECT slow.*,
           row_number() OVER (PARTITION BY source_id, week ORDER BY slow_trips DESC, pu_location_id) AS rank
    FROM slow
)
SELECT source_id, week, rank, pu_location_id, slow_trips
FROM ranked
WHERE rank <= 5;
