-- The queries Proca 3.4 sends for a full recalculation (docs/figures.md), as plain SQL:
-- one DISTINCT ON (campaign_id, fingerprint) … ORDER BY inserted_at pass for orgs,
-- a second one for areas, the extras sum and the action counts.
-- bench/run.py runs them, separated by lines of dashes, in one repeatable-read transaction.

SELECT campaign_id, org_id, count(*)
FROM (
    SELECT DISTINCT ON (a.campaign_id, s.fingerprint) a.campaign_id, p.org_id
    FROM actions a
    JOIN supporters s ON s.id = a.supporter_id
    JOIN action_pages p ON p.id = a.action_page_id
    WHERE s.processing_status = 3 AND a.processing_status IN (3, 4)
      AND s.dupe_rank = 0 AND s.fingerprint IS NOT NULL
    ORDER BY a.campaign_id, s.fingerprint, a.inserted_at, a.id
) first_actions
GROUP BY campaign_id, org_id
----
SELECT campaign_id, area, count(*)
FROM (
    SELECT DISTINCT ON (a.campaign_id, s.fingerprint) a.campaign_id, s.area
    FROM actions a
    JOIN supporters s ON s.id = a.supporter_id
    JOIN action_pages p ON p.id = a.action_page_id
    WHERE s.processing_status = 3 AND a.processing_status IN (3, 4)
      AND s.dupe_rank = 0 AND s.fingerprint IS NOT NULL AND s.area IS NOT NULL
    ORDER BY a.campaign_id, s.fingerprint, a.inserted_at, a.id
) first_actions_with_area
GROUP BY campaign_id, area
----
SELECT campaign_id, org_id, sum(extra_supporters)
FROM action_pages
WHERE extra_supporters <> 0
GROUP BY campaign_id, org_id
----
SELECT campaign_id, action_type, count(*)
FROM actions
WHERE processing_status IN (3, 4) AND NOT testing
GROUP BY campaign_id, action_type
