-- tripflow's schema, version 3: the pickup-date index becomes a BRIN index. A load writes a
-- version's rows in pickup-date order (one curated file per day, in key order), so a block-range
-- index finds a day's rows about as well as a B-tree does, at a fraction of the cost of building it
-- inside every load. Creating it on the parent builds it on every attached partition; a detached
-- previous version gets it when restore attaches it again.
DROP INDEX IF EXISTS tripflow.trips_pickup_date_idx;
CREATE INDEX trips_pickup_date_brin ON tripflow.trips USING brin (pickup_date);
