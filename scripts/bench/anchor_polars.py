"""Polars anchor: the same clean + transform as anchor_duckdb.py, partitioned by pickup_date.

    python anchor_polars.py SOURCE.parquet OUT_DIR
"""
import sys
from datetime import date

import polars as pl

source, out = sys.argv[1], sys.argv[2]
year, month = (int(p) for p in source.rsplit("_", 1)[-1].removesuffix(".parquet").split("-"))
start = date(year, month, 1)
end = date(year + month // 12, month % 12 + 1, 1)

swap = {161: 237, 237: 161}
duration_us = (pl.col("tpep_dropoff_datetime") - pl.col("tpep_pickup_datetime")).dt.total_microseconds()
speed = pl.col("trip_distance") / (duration_us / 3.6e9)
finite = lambda name: pl.col(name).fill_null(0).is_finite()  # noqa: E731
(
    pl.scan_parquet(source)
    .filter(
        pl.col("tpep_pickup_datetime").is_not_null()
        & pl.col("tpep_dropoff_datetime").is_not_null()
        & (duration_us > 0)
        & (pl.col("tpep_pickup_datetime") >= pl.lit(start))
        & (pl.col("tpep_pickup_datetime") < pl.lit(end))
        & pl.col("trip_distance").is_finite()
        & finite("fare_amount") & finite("tip_amount") & finite("total_amount")
        & (pl.col("trip_distance") >= 0)
        & pl.col("PULocationID").is_between(1, 265)
        & pl.col("DOLocationID").is_between(1, 265)
        & (duration_us <= 24 * 3600 * 1_000_000)
        & ~((pl.col("trip_distance") > 0) & (speed > 100))
    )
    .select(
        pl.col("VendorID").cast(pl.Int32).alias("vendor_id"),
        pl.col("tpep_pickup_datetime").alias("pickup_at"),
        pl.col("tpep_dropoff_datetime").alias("dropoff_at"),
        pl.col("passenger_count").cast(pl.Int32),
        pl.col("trip_distance"),
        pl.col("RatecodeID").cast(pl.Int32).alias("ratecode_id"),
        pl.col("PULocationID").replace(swap).cast(pl.Int32).alias("pu_location_id"),
        pl.col("DOLocationID").replace(swap).cast(pl.Int32).alias("do_location_id"),
        pl.col("payment_type").cast(pl.Int32),
        "fare_amount", "tip_amount", "total_amount", "congestion_surcharge", "airport_fee",
        (duration_us / 1e6).alias("duration_s"),
        pl.when(pl.col("trip_distance") > 0).then(speed).alias("speed_mph"),
        pl.col("tpep_pickup_datetime").dt.date().alias("pickup_date"),
        pl.col("tpep_pickup_datetime").dt.week().cast(pl.Int32).alias("pickup_week"),
    )
    .collect()
    .write_parquet(out, partition_by="pickup_date", compression="zstd")
)
