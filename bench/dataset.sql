-- A Proca-shaped data set, built inside PostgreSQL with generate_series.
-- Parameters (psql-style, substituted by bench/run.py): :supporters, :actions, :campaigns.
-- Every campaign has pages of several orgs; people come back (duplicate fingerprints,
-- ranked with dupe_rank as Proca does), act on several pages, have every status,
-- some actions are testing ones, some pages carry extra supporters, most supporters an area.
SELECT setseed(0.42);

INSERT INTO orgs (id, name, title)
SELECT g, 'org' || g, 'Org ' || g FROM generate_series(1, greatest(:campaigns / 2, 4)) g;

INSERT INTO campaigns (id, name, title, org_id, status)
SELECT g, 'campaign' || g, 'Campaign ' || g, 1 + g % greatest(:campaigns / 2, 4),
       CASE WHEN g % 10 = 0 THEN 1 WHEN g % 25 = 0 THEN 2 ELSE 0 END
FROM generate_series(1, :campaigns) g;

-- Four pages per campaign, of different orgs; one page in twenty without org.
INSERT INTO action_pages (id, name, campaign_id, org_id, extra_supporters)
SELECT g, 'page' || g, 1 + (g - 1) / 4,
       CASE WHEN g % 20 = 0 THEN NULL ELSE 1 + (g * 7) % greatest(:campaigns / 2, 4) END,
       CASE WHEN g % 9 = 0 THEN (g % 50) - 10 ELSE 0 END
FROM generate_series(1, :campaigns * 4) g;

-- Supporters: four records in a row share a campaign; one person in three comes back
-- with a second supporter record (a duplicate fingerprint), a few a third time.
INSERT INTO supporters (id, campaign_id, action_page_id, fingerprint, area, processing_status,
                        inserted_at, updated_at)
SELECT g, c, (c - 1) * 4 + 1 + (g % 4),
       CASE WHEN g % 500 = 3 THEN NULL ELSE decode(md5(c::text || ':' || person::text), 'hex') END,
       CASE WHEN g % 7 = 0 THEN NULL
            ELSE (ARRAY['DE','FR','PL','IT','ES','NL','BE','AT','SE','PT','GB','IE'])[1 + g % 12] END,
       CASE WHEN random() < 0.80 THEN 3 ELSE (ARRAY[0, 1, 2, 4])[1 + g % 4] END,
       t, t
FROM (SELECT g,
             1 + ((g / 4) * 7919) % :campaigns AS c,
             CASE WHEN g % 4 = 1 THEN g - 1 WHEN g % 40 = 2 THEN g - 2 ELSE g END AS person,
             timestamp '2024-01-01' + (g * interval '20 second') AS t
      FROM generate_series(1::bigint, :supporters) g) s;

-- dupe_rank as Proca ranks it: 0 for the first record of a fingerprint in a campaign.
-- A few are left unranked (NULL), as right after insert.
UPDATE supporters s SET dupe_rank = CASE WHEN s.id % 333 = 0 THEN NULL ELSE r.rank END
FROM (SELECT id, row_number() OVER (PARTITION BY campaign_id, fingerprint ORDER BY id) - 1 AS rank
      FROM supporters WHERE fingerprint IS NOT NULL) r
WHERE r.id = s.id;

-- Actions: one per supporter, then more by random supporters of the same campaign,
-- a few without a supporter; every status; two percent testing; inserted_at ties on purpose.
INSERT INTO actions (id, supporter_id, action_type, campaign_id, action_page_id,
                     processing_status, testing, inserted_at, updated_at)
SELECT g, sid, (ARRAY['signature','share','mail2target','petition','donation'])[1 + g % 5],
       c, (c - 1) * 4 + 1 + (g * 13) % 4,
       CASE WHEN random() < 0.75 THEN 3 WHEN random() < 0.5 THEN 4 ELSE (g % 3) END,
       g % 50 = 0, t, t
FROM (
    SELECT g,
           CASE WHEN g <= :supporters THEN g
                WHEN g % 40 = 0 THEN NULL
                ELSE 1 + (g * 104729) % :supporters END AS sid,
           timestamp '2024-01-01' + (((g * 6007) % (:supporters + 1)) * interval '20 second') AS t
    FROM generate_series(1::bigint, :actions) g
) a
LEFT JOIN LATERAL (SELECT campaign_id FROM supporters WHERE id = a.sid) s ON true
CROSS JOIN LATERAL (SELECT coalesce(s.campaign_id, 1 + (g % :campaigns)) AS c) cc;

-- Rows were given their ids: move the sequences past them, as Proca's inserts would have.
SELECT setval(pg_get_serial_sequence('orgs', 'id'), (SELECT max(id) FROM orgs));
SELECT setval(pg_get_serial_sequence('campaigns', 'id'), (SELECT max(id) FROM campaigns));
SELECT setval(pg_get_serial_sequence('action_pages', 'id'), (SELECT max(id) FROM action_pages));
SELECT setval(pg_get_serial_sequence('supporters', 'id'), (SELECT max(id) FROM supporters));
SELECT setval(pg_get_serial_sequence('actions', 'id'), (SELECT max(id) FROM actions));
