-- A small Proca-shaped data set for trying proca-stats (`proca-stats db demo`, `serve --demo`),
-- generated inside PostgreSQL: 4 orgs, 6 campaigns of every status, pages with extra supporters
-- (one of them negative), about 3,000 supporter records with duplicates, pending and rejected
-- ones, areas, testing actions and actions without a supporter.
--
-- Deterministic: every "random" choice is a hash (md5) of the row's number, so each load gives
-- the same rows and the same figures; ids come from the tables' sequences, so rows already
-- there (with --force) are left alone. Run in one transaction.

CREATE FUNCTION pg_temp.demo_rand(key text) RETURNS float8 LANGUAGE sql IMMUTABLE AS
$$ SELECT ('x' || substr(md5(key), 1, 13))::bit(52)::bigint / 4503599627370496.0 $$;

CREATE TEMP TABLE demo_org (n int PRIMARY KEY, id bigint) ON COMMIT DROP;
CREATE TEMP TABLE demo_campaign (n int PRIMARY KEY, id bigint, records int, action_type text)
    ON COMMIT DROP;
CREATE TEMP TABLE demo_page (n int PRIMARY KEY, id bigint, campaign int, org int, weight float8)
    ON COMMIT DROP;

WITH wanted (n, name, title) AS (VALUES
    (1, 'demo_bees', 'Friends of the Bees'),
    (2, 'demo_air', 'Clean Air Now'),
    (3, 'demo_tech', 'Fair Tech Alliance'),
    (4, 'demo_repair', 'Repair Coalition')
), inserted AS (
    INSERT INTO orgs (name, title) SELECT name, title FROM wanted ORDER BY n RETURNING id, name
)
INSERT INTO demo_org SELECT w.n, i.id FROM wanted w JOIN inserted i USING (name);

-- status: 0 live, 1 closed, 2 ignored.
WITH wanted (n, name, title, org, status, records, action_type) AS (VALUES
    (1, 'demo_save_the_bees', 'Save the bees', 1, 0, 1200, 'signature'),
    (2, 'demo_clean_air', 'Clean air for our cities', 2, 0, 900, 'mail2target'),
    (3, 'demo_fair_tech', 'Fair tech', 3, 0, 500, 'signature'),
    (4, 'demo_old_forest', 'Protect the old forest', 1, 1, 300, 'signature'),
    (5, 'demo_right_to_repair', 'Right to repair', 4, 1, 200, 'signature'),
    (6, 'demo_test_run', 'A test run', 2, 2, 50, 'signature')
), inserted AS (
    INSERT INTO campaigns (name, title, org_id, status)
    SELECT w.name, w.title, o.id, w.status FROM wanted w JOIN demo_org o ON o.n = w.org ORDER BY w.n
    RETURNING id, name
)
INSERT INTO demo_campaign
SELECT w.n, i.id, w.records, w.action_type FROM wanted w JOIN inserted i USING (name);

-- Each campaign's own page takes most supporters; partners' pages the rest. Extra supporters
-- are those collected elsewhere (on paper, say); -5 corrects a count that was too high; the
-- repair coalition's page on fair tech has extra supporters only.
WITH wanted (n, campaign, org, weight, extra) AS (VALUES
    (1, 1, 1, 0.70, 250), (2, 1, 2, 0.20, 0), (3, 1, 3, 0.10, 0),
    (4, 2, 2, 0.80, 0), (5, 2, 1, 0.20, 40),
    (6, 3, 3, 1.00, 0), (7, 3, 4, 0.00, 30),
    (8, 4, 1, 0.85, -5), (9, 4, 4, 0.15, 0),
    (10, 5, 4, 1.00, 12),
    (11, 6, 2, 1.00, 0)
), inserted AS (
    INSERT INTO action_pages (name, campaign_id, org_id, extra_supporters)
    SELECT 'demo/' || c.n || '/' || w.n, c.id, o.id, w.extra
    FROM wanted w JOIN demo_campaign c ON c.n = w.campaign JOIN demo_org o ON o.n = w.org
    ORDER BY w.n
    RETURNING id, name
)
INSERT INTO demo_page
SELECT w.n, i.id, w.campaign, w.org, w.weight
FROM wanted w JOIN inserted i ON i.name = 'demo/' || w.campaign || '/' || w.n;

ALTER TABLE demo_page ADD COLUMN upto float8;  -- the campaign's weights up to this page
UPDATE demo_page p SET upto = w.upto
FROM (SELECT n, sum(weight) OVER (PARTITION BY campaign ORDER BY n) AS upto FROM demo_page) w
WHERE w.n = p.n;

-- Supporter records: record r of campaign c is person floor(u * 3 * records), so about one
-- record in six repeats a person of the same campaign (a duplicate, ranked below). 88 % are
-- accepted, the rest confirming, rejected or new; 5 % have no area.
CREATE TEMP TABLE demo_record ON COMMIT DROP AS
SELECT c.n AS campaign, c.id AS campaign_id, r,
       pg_temp.demo_rand('page ' || c.n || ' ' || r) AS u_page,
       floor(pg_temp.demo_rand('person ' || c.n || ' ' || r) * 3 * c.records)::int AS person,
       pg_temp.demo_rand('status ' || c.n || ' ' || r) AS u_status,
       pg_temp.demo_rand('area ' || c.n || ' ' || r) AS u_area,
       timestamp '2026-01-05 08:00:00'
           + make_interval(mins => (r * 43200 / c.records)::int)
           + make_interval(secs => floor(pg_temp.demo_rand('at ' || c.n || ' ' || r) * 600)::int)
           AS at
FROM demo_campaign c, generate_series(1, c.records) AS r;

CREATE TEMP TABLE demo_supporter ON COMMIT DROP AS
SELECT d.*, p.id AS page_id,
       decode(md5('demo person ' || d.campaign || ' ' || d.person), 'hex') AS fingerprint,
       CASE WHEN d.u_area < 0.05 THEN NULL
            ELSE (ARRAY['DE', 'DE', 'DE', 'FR', 'FR', 'IT', 'ES', 'PL', 'NL', 'AT', 'BE', 'SE'])
                 [1 + floor((d.u_area - 0.05) / 0.95 * 12)::int]
       END AS area,
       CASE WHEN d.u_status < 0.88 THEN 3 WHEN d.u_status < 0.93 THEN 1
            WHEN d.u_status < 0.97 THEN 2 ELSE 0 END AS status
FROM demo_record d
JOIN LATERAL (
    -- The page whose cumulative weight first passes u_page.
    SELECT p.id FROM demo_page p
    WHERE p.campaign = d.campaign AND p.upto >= d.u_page
    ORDER BY p.n LIMIT 1
) p ON true;

ALTER TABLE demo_supporter ADD COLUMN id bigint;
UPDATE demo_supporter SET id = nextval(pg_get_serial_sequence('supporters', 'id'));

-- dupe_rank as Proca's job sets it: 0 for the first record of a fingerprint in a campaign, 1, 2,
-- ... for later ones; new records are not ranked yet (NULL).
INSERT INTO supporters (id, campaign_id, action_page_id, fingerprint, area, processing_status,
                        dupe_rank, inserted_at, updated_at)
SELECT id, campaign_id, page_id, fingerprint, area, status,
       CASE WHEN status = 0 THEN NULL
            ELSE row_number() OVER (PARTITION BY campaign_id, fingerprint ORDER BY at, id) - 1
       END,
       at, at
FROM demo_supporter
ORDER BY id;

-- One action per record, of the campaign's type, accepted (3) or delivered (4) when its
-- supporter was accepted; 2 % are testing actions (they count for supporters, not for actions).
INSERT INTO actions (supporter_id, action_type, campaign_id, action_page_id, processing_status,
                     testing, inserted_at, updated_at)
SELECT s.id, c.action_type, s.campaign_id, s.page_id,
       CASE WHEN s.status <> 3 THEN s.status
            WHEN pg_temp.demo_rand('delivered ' || s.id) < 0.3 THEN 4 ELSE 3 END,
       pg_temp.demo_rand('testing ' || s.campaign || ' ' || s.r) < 0.02,
       s.at, s.at
FROM demo_supporter s JOIN demo_campaign c ON c.n = s.campaign
ORDER BY s.id;

-- A quarter of the accepted supporters also shared the campaign, an hour later; a few donated.
INSERT INTO actions (supporter_id, action_type, campaign_id, action_page_id, processing_status,
                     testing, inserted_at, updated_at)
SELECT s.id, t.action_type, s.campaign_id, s.page_id, 3, false,
       s.at + interval '1 hour', s.at + interval '1 hour'
FROM demo_supporter s
JOIN (VALUES ('share', 0.25), ('donation', 0.03)) AS t (action_type, share)
  ON pg_temp.demo_rand(t.action_type || ' ' || s.campaign || ' ' || s.r) < t.share
WHERE s.status = 3
ORDER BY s.id, t.action_type;

-- Shares by visitors who left no contact: actions without a supporter.
INSERT INTO actions (supporter_id, action_type, campaign_id, action_page_id, processing_status,
                     testing, inserted_at, updated_at)
SELECT NULL, 'share', p.campaign_id, p.id, 3, false, at, at
FROM (SELECT dp.id, c.id AS campaign_id, dp.n FROM demo_page dp
      JOIN demo_campaign c ON c.n = dp.campaign WHERE dp.weight > 0) p,
     generate_series(1, 3) AS k,
     LATERAL (SELECT timestamp '2026-01-20 12:00:00' + make_interval(hours => p.n * 3 + k)) AS t (at)
ORDER BY p.id, k;
