"""The fleet ledger's PostgreSQL schema: an append-only list of migrations, like the SQLite
ledger's, with the version kept in ``edgeroute_schema``.

Why the checks live in the database: a reservation is one call of ``edgeroute_reserve``,
one round trip, so the lock it takes is held for the server's microseconds, never for a
device's network latency. The lock is the database's own (``pg_advisory_xact_lock``, gone
with the transaction, so a device that dies never holds it): it serialises what can raise
the counted spend (reservations and lease grants), the way ``BEGIN IMMEDIATE`` does in the
SQLite ledger. Settling, releasing and shrinking a lease only lower it and take no lock.

Why totals: a cap check reads six rows of ``edgeroute_totals`` (this day and month, for
every row, the expert's and the device's) instead of summing a month of spend rows. A
trigger keeps them in the same transaction as every insert, update or delete of
``edgeroute_spend``, so they cannot drift from the rows (``edgeroute_totals_drift()``
recomputes them; the tests check it is empty).

What a row counts (``edgeroute_counted``): a call its settled cost, or its reservation while
the outcome is unknown; a lease what of it is not yet accounted for by uploaded calls
(``reserved_usd - used_usd``), while it is held.
"""

from __future__ import annotations

from typing import Any

LEDGER_LOCK = 0x65646765  # pg_advisory_xact_lock key of reservations and lease grants
MIGRATE_LOCK = 0x6D696772  # ... of schema migrations (devices start together)

SPEND_TABLE = """
CREATE TABLE edgeroute_spend (
    id BIGSERIAL PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('call', 'lease')),
    ts DOUBLE PRECISION NOT NULL,
    day TEXT NOT NULL,
    month TEXT NOT NULL,
    device_id TEXT NOT NULL,
    session TEXT NOT NULL,
    expert TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('reserved', 'settled', 'released')),
    reserved_usd NUMERIC NOT NULL CHECK (reserved_usd >= 0),
    settled_usd NUMERIC,
    used_usd NUMERIC NOT NULL DEFAULT 0,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    estimated BOOLEAN NOT NULL DEFAULT FALSE,
    lease_id BIGINT REFERENCES edgeroute_spend (id),
    expires_ts DOUBLE PRECISION,
    local_uid TEXT UNIQUE
);
CREATE INDEX edgeroute_spend_open ON edgeroute_spend (device_id, kind) WHERE state = 'reserved';
CREATE INDEX edgeroute_spend_month ON edgeroute_spend (month, device_id, expert);
CREATE TABLE edgeroute_totals (
    period TEXT NOT NULL,
    scope TEXT NOT NULL,
    counted NUMERIC NOT NULL DEFAULT 0,
    PRIMARY KEY (period, scope)
);
"""

COUNTED = """
CREATE FUNCTION edgeroute_counted(r edgeroute_spend) RETURNS NUMERIC
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN r.kind = 'call' THEN CASE r.state WHEN 'settled' THEN r.settled_usd
                                               WHEN 'reserved' THEN r.reserved_usd ELSE 0 END
        WHEN r.state = 'reserved' THEN GREATEST(r.reserved_usd - r.used_usd, 0)
        ELSE 0 END
$$;
"""

# Keys in one fixed order (month before day, then all, device, expert), so two triggers
# lock the totals rows they share in the same order and never deadlock each other.
TOTALS_TRIGGER = """
CREATE FUNCTION edgeroute_totals_add(r edgeroute_spend, delta NUMERIC) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO edgeroute_totals AS t (period, scope, counted) VALUES
        (r.month, 'all', delta), (r.month, 'device:' || r.device_id, delta),
        (r.month, 'expert:' || r.expert, delta),
        (r.day, 'all', delta), (r.day, 'device:' || r.device_id, delta),
        (r.day, 'expert:' || r.expert, delta)
    ON CONFLICT (period, scope) DO UPDATE SET counted = t.counted + EXCLUDED.counted
$$;
CREATE FUNCTION edgeroute_totals_apply() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND (OLD.day, OLD.month, OLD.device_id, OLD.expert)
            IS DISTINCT FROM (NEW.day, NEW.month, NEW.device_id, NEW.expert) THEN
        RAISE EXCEPTION 'edgeroute_spend: a row''s period, device and expert never change';
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE') AND edgeroute_counted(OLD) <> 0 THEN
        PERFORM edgeroute_totals_add(OLD, -edgeroute_counted(OLD));
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') AND edgeroute_counted(NEW) <> 0 THEN
        PERFORM edgeroute_totals_add(NEW, edgeroute_counted(NEW));
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER edgeroute_totals AFTER INSERT OR UPDATE OR DELETE ON edgeroute_spend
    FOR EACH ROW EXECUTE FUNCTION edgeroute_totals_apply();
CREATE FUNCTION edgeroute_totals_drift()
RETURNS TABLE (period TEXT, scope TEXT, kept NUMERIC, recomputed NUMERIC)
LANGUAGE sql STABLE AS $$
    WITH c AS (SELECT s.day, s.month, s.device_id, s.expert, edgeroute_counted(s) AS usd
               FROM edgeroute_spend s),
    keyed AS (
        SELECT month AS period, 'all' AS scope, usd FROM c
        UNION ALL SELECT month, 'device:' || device_id, usd FROM c
        UNION ALL SELECT month, 'expert:' || expert, usd FROM c
        UNION ALL SELECT day, 'all', usd FROM c
        UNION ALL SELECT day, 'device:' || device_id, usd FROM c
        UNION ALL SELECT day, 'expert:' || expert, usd FROM c),
    sums AS (SELECT period, scope, SUM(usd) AS usd FROM keyed GROUP BY period, scope)
    SELECT COALESCE(t.period, s.period), COALESCE(t.scope, s.scope),
           COALESCE(t.counted, 0), COALESCE(s.usd, 0)
    FROM edgeroute_totals t FULL JOIN sums s ON s.period = t.period AND s.scope = t.scope
    WHERE COALESCE(t.counted, 0) <> COALESCE(s.usd, 0)
$$;
"""

# p_limits: [{"label", "period": "day"|"month", "scope": "all"|"expert:X"|"device:Y",
# "cap"}], every cap that applies, as the device's settings say.
CHECKS = f"""
CREATE FUNCTION edgeroute_limits(p_limits JSONB, p_day TEXT, p_month TEXT)
RETURNS TABLE (label TEXT, cap NUMERIC, counted NUMERIC) LANGUAGE sql STABLE AS $$
    SELECT l->>'label', (l->>'cap')::NUMERIC, COALESCE(t.counted, 0)
    FROM jsonb_array_elements(p_limits) WITH ORDINALITY AS e(l, n)
    LEFT JOIN edgeroute_totals t
        ON t.period = CASE l->>'period' WHEN 'day' THEN p_day ELSE p_month END
       AND t.scope = l->>'scope'
    ORDER BY n
$$;
CREATE FUNCTION edgeroute_reserve(p_device TEXT, p_session TEXT, p_expert TEXT,
                                  p_usd NUMERIC, p_limits JSONB)
RETURNS TABLE (out_id BIGINT, out_refused TEXT, out_cap NUMERIC, out_counted NUMERIC,
               out_left NUMERIC)
LANGUAGE plpgsql AS $$
DECLARE
    d TEXT := to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD');
    m TEXT := to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM');
    lim RECORD;
    least_left NUMERIC;
    new_id BIGINT;
BEGIN
    PERFORM pg_advisory_xact_lock({LEDGER_LOCK});
    FOR lim IN SELECT * FROM edgeroute_limits(p_limits, d, m) LOOP
        IF lim.counted + p_usd > lim.cap THEN
            RETURN QUERY SELECT NULL::BIGINT, lim.label, lim.cap, lim.counted, NULL::NUMERIC;
            RETURN;
        END IF;
        least_left := LEAST(COALESCE(least_left, lim.cap - lim.counted - p_usd),
                            lim.cap - lim.counted - p_usd);
    END LOOP;
    INSERT INTO edgeroute_spend (kind, ts, day, month, device_id, session, expert, state,
                                 reserved_usd)
    VALUES ('call', extract(epoch FROM now()), d, m, p_device, p_session, p_expert,
            'reserved', p_usd)
    RETURNING id INTO new_id;
    RETURN QUERY SELECT new_id, NULL::TEXT, NULL::NUMERIC, NULL::NUMERIC, least_left;
END $$;
CREATE FUNCTION edgeroute_grant_lease(p_device TEXT, p_session TEXT, p_expert TEXT,
                                      p_usd NUMERIC, p_min NUMERIC, p_limits JSONB,
                                      p_ttl_s DOUBLE PRECISION)
RETURNS TABLE (out_id BIGINT, out_usd NUMERIC, out_day TEXT, out_month TEXT,
               out_expires DOUBLE PRECISION)
LANGUAGE plpgsql AS $$
DECLARE
    d TEXT := to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD');
    m TEXT := to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM');
    day_end DOUBLE PRECISION := extract(epoch FROM
        (date_trunc('day', now() AT TIME ZONE 'UTC') + interval '1 day') AT TIME ZONE 'UTC');
    g NUMERIC := p_usd;
    lim RECORD;
    new_id BIGINT;
BEGIN
    PERFORM pg_advisory_xact_lock({LEDGER_LOCK});
    FOR lim IN SELECT * FROM edgeroute_limits(p_limits, d, m) LOOP
        g := LEAST(g, lim.cap - lim.counted);
    END LOOP;
    IF g < p_min OR g <= 0 THEN
        RETURN;
    END IF;
    INSERT INTO edgeroute_spend (kind, ts, day, month, device_id, session, expert, state,
                                 reserved_usd, expires_ts)
    VALUES ('lease', extract(epoch FROM now()), d, m, p_device, p_session, p_expert,
            'reserved', g, LEAST(extract(epoch FROM now()) + p_ttl_s, day_end))
    RETURNING id INTO new_id;
    RETURN QUERY SELECT new_id, g, d, m, LEAST(extract(epoch FROM now()) + p_ttl_s, day_end);
END $$;
"""

PROFILES = """
CREATE TABLE edgeroute_profiles (
    id BIGSERIAL PRIMARY KEY,
    encoder_id TEXT NOT NULL,
    name TEXT NOT NULL,
    profile JSONB NOT NULL,
    device_id TEXT NOT NULL,
    published_ts DOUBLE PRECISION NOT NULL
);
CREATE INDEX edgeroute_profiles_latest ON edgeroute_profiles (encoder_id, name, id DESC);
"""

# Append-only: the index + 1 is the schema version a database has once it ran.
MIGRATIONS: list[str] = [SPEND_TABLE + COUNTED + TOTALS_TRIGGER + CHECKS, PROFILES]


def migrate(conn: Any) -> int:
    """Bring the database to the newest schema this code knows; returns its version.
    Runs in one transaction under an advisory lock, so devices that start together apply
    each migration once. A database newer than this code raises LedgerConfigError."""
    from agent.errors import LedgerConfigError

    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATE_LOCK,))
        conn.execute("CREATE TABLE IF NOT EXISTS edgeroute_schema (version INTEGER NOT NULL)")
        row = conn.execute("SELECT version FROM edgeroute_schema").fetchone()
        version = 0 if row is None else int(row[0])
        if row is None:
            conn.execute("INSERT INTO edgeroute_schema (version) VALUES (0)")
        if version > len(MIGRATIONS):
            raise LedgerConfigError(
                f"the fleet ledger's schema is version {version}, newer than this edgeroute "
                f"knows ({len(MIGRATIONS)}); upgrade edgeroute on this device")
        for i, sql in enumerate(MIGRATIONS[version:], start=version):
            conn.execute(sql)
            conn.execute("UPDATE edgeroute_schema SET version = %s", (i + 1,))
    return max(version, len(MIGRATIONS))
