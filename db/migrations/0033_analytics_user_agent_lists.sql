-- Which User-Agent lists counted each download: the OPAWG user-agents-v2 commit and
-- Podmesh's overlay version (services/analytics/counting/user_agents.py). A change of
-- lists changes counting; RebuildCounts recounts a range with the current lists, and
-- this column says which rows it has reached. Downloads counted before the lists were
-- adopted were classified by Podmesh's own rules file.
ALTER TABLE downloads ADD COLUMN user_agent_lists text NOT NULL DEFAULT 'podmesh-rules.1';
ALTER TABLE downloads ALTER COLUMN user_agent_lists DROP DEFAULT;
