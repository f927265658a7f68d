"""DuckDB anchor: the month's clean + transform as the obvious 30-line script would do it.

    python anchor_duckdb.py SOURCE.parquet OUT_DIR partitioned|one-file

Applies the same rules as tripflow's clean (null or out-of-range timestamps, non-positive or
day-long durations, pickups outside the month, non-finite or negative distances and money, zones
outside 1..265, over 100 mph), swaps zones 161 and 237, derives duration, speed, pickup date and ISO
week, and writes Parquet: Hive partitions by pickup_date (zstd), or one file (zstd level 1).
"""
import sys

import duckdb

source, out, layout = sys.argv[1], sys.argv[2], sys.argv[3]
month = source.rsplit("_", 1)[-1].removesuffix(".parquet")  # yellow_tripdata_2021-03.parquet
curated = f"""
WITH trips AS (
    SELECT *, epoch_us(tpep_dropoff_datetime) - epoch_us(tpep_pickup_datetime) AS duration_us
    FROM read_parquet('{source}')
), kept AS (
    SELECT * FROM trips
    WHERE tpep_pickup_datetime IS NOT NULL AND tpep_dropoff_datetime IS NOT NULL
      AND duration_us > 0
      AND tpep_pickup_datetime >= DATE '{month}-01'
      AND tpep_pickup_datetime < DATE '{month}-01' + INTERVAL 1 MONTH
      AND isfinite(trip_distance) AND isfinite(coalesce(fare_amount, 0))
      AND isfinite(coalesce(tip_amount, 0)) AND isfinite(coalesce(total_amount, 0))
      AND trip_distance >= 0
      AND PULocationID BETWEEN 1 AND 265 AND DOLocationID BETWEEN 1 AND 265
      AND duration_us <= 86400000000
      AND NOT (trip_distance > 0 AND trip_distance / (duration_us / 3600e6) > 100)
)
SELECT VendorID::INTEGER AS vendor_id,
       tpep_pickup_datetime AS pickup_at, tpep_dropoff_datetime AS dropoff_at,
       passenger_count::INTEGER AS passenger_count, trip_distance,
       RatecodeID::INTEGER AS ratecode_id,
       CASE PULocationID WHEN 161 THEN 237 WHEN 237 THEN 161 ELSE PULocationID END::INTEGER AS pu_location_id,
       CASE DOLocationID WHEN 161 THEN 237 WHEN 237 THEN 161 ELSE DOLocationID END::INTEGER AS do_location_id,
       payment_type::INTEGER AS payment_type, fare_amount, tip_amount, total_amount,
       congestion_surcharge, airport_fee,
       duration_us / 1e6 AS duration_s,
       CASE WHEN trip_distance > 0 THEN trip_distance / (duration_us / 3600e6) END AS speed_mph,
       tpep_pickup_datetime::DATE AS pickup_date,
       week(tpep_pickup_datetime)::INTEGER AS pickup_week
FROM kept
"""
if layout == "partitioned":
    duckdb.sql(f"COPY ({curated}) TO '{out}' (FORMAT parquet, PARTITION_BY (pickup_date), COMPRESSION zstd)")
else:
    duckdb.sql(f"COPY ({curated}) TO '{out}/curated.parquet' (FORMAT parquet, COMPRESSION zstd, COMPRESSION_LEVEL 1)")
