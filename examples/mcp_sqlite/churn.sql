-- A small subscription business, for the "pull last quarter's churn numbers" walk-through.
--
--   python examples/mcp_sqlite/make_db.py churn.db      (or: sqlite3 churn.db < churn.sql)
--
-- 1,800 subscriptions started between 2023-07 and 2026-09 across three segments; the data ends
-- on 2026-09-30 (see `meta`), so the last complete quarter is 2026-Q3. The rows are generated
-- from fixed arithmetic, not random(): every build of the file holds the same figures.

PRAGMA foreign_keys = ON;

CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO meta VALUES
  ('data_as_of', '2026-09-30'),
  ('currency', 'USD'),
  ('churn_definition',
   'Logo churn of a quarter: subscriptions active on its first day that were cancelled before '
   || 'its end, divided by those active on its first day. Revenue churn: the same in MRR.');

CREATE TABLE plans (
  name TEXT PRIMARY KEY,
  seat_price_usd REAL NOT NULL          -- per seat and month
);
INSERT INTO plans VALUES ('starter', 12.0), ('growth', 25.0), ('enterprise', 40.0);

CREATE TABLE customers (
  id INTEGER PRIMARY KEY,
  company TEXT NOT NULL,
  segment TEXT NOT NULL CHECK (segment IN ('smb', 'mid-market', 'enterprise')),
  region TEXT NOT NULL CHECK (region IN ('EMEA', 'NA', 'APAC', 'LATAM'))
);

CREATE TABLE subscriptions (
  id INTEGER PRIMARY KEY,
  customer_id INTEGER NOT NULL REFERENCES customers (id),
  plan TEXT NOT NULL REFERENCES plans (name),
  seats INTEGER NOT NULL CHECK (seats > 0),
  mrr_usd REAL NOT NULL,                -- monthly recurring revenue: seats x the plan's price
  started_on TEXT NOT NULL,             -- ISO date
  cancelled_on TEXT,                    -- ISO date the subscription ended; NULL while active
  cancel_reason TEXT,
  CHECK (cancelled_on IS NULL OR cancelled_on > started_on)
);
CREATE INDEX ix_subscriptions_dates ON subscriptions (started_on, cancelled_on);

CREATE TABLE quarters (
  quarter TEXT PRIMARY KEY,             -- e.g. 2026-Q3
  starts_on TEXT NOT NULL,              -- first day
  ends_on TEXT NOT NULL                 -- first day of the next quarter
);
INSERT INTO quarters VALUES
  ('2025-Q1', '2025-01-01', '2025-04-01'),
  ('2025-Q2', '2025-04-01', '2025-07-01'),
  ('2025-Q3', '2025-07-01', '2025-10-01'),
  ('2025-Q4', '2025-10-01', '2026-01-01'),
  ('2026-Q1', '2026-01-01', '2026-04-01'),
  ('2026-Q2', '2026-04-01', '2026-07-01'),
  ('2026-Q3', '2026-07-01', '2026-10-01');

-- One customer per subscription; names from two short word lists.
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1800),
first(k, word) AS (VALUES (0, 'Acme'), (1, 'Globex'), (2, 'Initech'), (3, 'Umbrella'),
  (4, 'Hooli'), (5, 'Vandelay'), (6, 'Soylent'), (7, 'Tyrell'), (8, 'Wonka'), (9, 'Stark'),
  (10, 'Nakatomi'), (11, 'Cyberdyne'), (12, 'Oscorp')),
second(k, word) AS (VALUES (0, 'Labs'), (1, 'Foods'), (2, 'Systems'), (3, 'Logistics'),
  (4, 'Health'), (5, 'Media'), (6, 'Retail'), (7, 'Energy'), (8, 'Studios'), (9, 'Analytics'))
INSERT INTO customers (id, company, segment, region)
SELECT i,
       (SELECT word FROM first WHERE k = i % 13) || ' ' ||
       (SELECT word FROM second WHERE k = (i / 13) % 10) || ' ' || (i / 130 + 1),
       CASE WHEN i % 10 < 6 THEN 'smb' WHEN i % 10 < 9 THEN 'mid-market' ELSE 'enterprise' END,
       CASE (i * 7) % 9 WHEN 0 THEN 'LATAM' WHEN 1 THEN 'APAC' WHEN 2 THEN 'APAC'
            WHEN 3 THEN 'NA' WHEN 4 THEN 'NA' WHEN 5 THEN 'NA' ELSE 'EMEA' END
FROM n;

-- Subscriptions: started_on spread over 2023-07-01 .. 2026-09-28; whether and when one is
-- cancelled comes from a multiplicative hash of its id, with smaller customers churning more
-- and the product getting stickier over time (fewer cancellations for later cohorts).
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1800),
s AS (
  SELECT i,
         CASE WHEN i % 10 < 6 THEN 'starter' WHEN i % 10 < 9 THEN 'growth' ELSE 'enterprise' END
           AS plan,
         CASE WHEN i % 10 < 6 THEN 2 + (i * 31) % 9
              WHEN i % 10 < 9 THEN 10 + (i * 17) % 41
              ELSE 60 + (i * 13) % 241 END AS seats,
         date('2023-07-01', '+' || ((i * 7919) % 1186) || ' days') AS started_on,
         (i * 2654435761) % 1000 AS h,
         ((i * 40503) % 997) AS d
  FROM n
),
c AS (
  SELECT s.*,
         CASE WHEN h < (CASE WHEN plan = 'starter' THEN 560 WHEN plan = 'growth' THEN 380
                             ELSE 190 END)
                        - (julianday(started_on) - julianday('2023-07-01')) / 6
              THEN date(started_on, '+' || (45 + d % 700) || ' days') END AS ends
  FROM s
)
INSERT INTO subscriptions (id, customer_id, plan, seats, mrr_usd, started_on, cancelled_on,
                           cancel_reason)
SELECT i, i, c.plan, seats, seats * p.seat_price_usd, started_on,
       CASE WHEN ends <= '2026-09-30' THEN ends END,
       CASE WHEN ends <= '2026-09-30' THEN
         CASE h % 6 WHEN 0 THEN 'price' WHEN 1 THEN 'switched to a competitor'
                    WHEN 2 THEN 'missing features' WHEN 3 THEN 'budget cuts'
                    WHEN 4 THEN 'poor onboarding' ELSE 'business closed' END END
FROM c JOIN plans p ON p.name = c.plan;

-- The figures a one-pager needs, per quarter.
CREATE VIEW quarterly_churn AS
SELECT q.quarter,
       count(*) FILTER (WHERE s.started_on < q.starts_on
                          AND (s.cancelled_on IS NULL OR s.cancelled_on >= q.starts_on))
         AS active_at_start,
       count(*) FILTER (WHERE s.started_on >= q.starts_on AND s.started_on < q.ends_on)
         AS new_subscriptions,
       count(*) FILTER (WHERE s.started_on < q.starts_on
                          AND s.cancelled_on >= q.starts_on AND s.cancelled_on < q.ends_on)
         AS churned,
       round(100.0 * count(*) FILTER (WHERE s.started_on < q.starts_on
                                        AND s.cancelled_on >= q.starts_on
                                        AND s.cancelled_on < q.ends_on)
             / count(*) FILTER (WHERE s.started_on < q.starts_on
                                  AND (s.cancelled_on IS NULL OR s.cancelled_on >= q.starts_on)),
             2) AS logo_churn_pct,
       round(total(s.mrr_usd) FILTER (WHERE s.started_on < q.starts_on
                                        AND (s.cancelled_on IS NULL
                                             OR s.cancelled_on >= q.starts_on)), 2)
         AS mrr_at_start_usd,
       round(total(s.mrr_usd) FILTER (WHERE s.started_on < q.starts_on
                                        AND s.cancelled_on >= q.starts_on
                                        AND s.cancelled_on < q.ends_on), 2)
         AS churned_mrr_usd,
       round(100.0 * total(s.mrr_usd) FILTER (WHERE s.started_on < q.starts_on
                                                AND s.cancelled_on >= q.starts_on
                                                AND s.cancelled_on < q.ends_on)
             / total(s.mrr_usd) FILTER (WHERE s.started_on < q.starts_on
                                          AND (s.cancelled_on IS NULL
                                               OR s.cancelled_on >= q.starts_on)),
             2) AS revenue_churn_pct
FROM quarters q CROSS JOIN subscriptions s
GROUP BY q.quarter
ORDER BY q.quarter;
