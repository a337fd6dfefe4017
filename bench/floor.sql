-- The floor: one bare scan of the actions⋈supporters join with the counting filters.
SELECT count(*)
FROM actions a
JOIN supporters s ON s.id = a.supporter_id
WHERE s.processing_status = 3 AND a.processing_status IN (3, 4)
  AND s.dupe_rank = 0 AND s.fingerprint IS NOT NULL
