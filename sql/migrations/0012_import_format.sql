-- How an import's file is written: given with the upload or detected from its first bytes, and kept so a
-- resumed run reads the rest of the file as the first run read its beginning. NULL (imports queued before
-- this column existed) means "detect when the import runs".
ALTER TABLE imports ADD COLUMN encoding text, ADD COLUMN delimiter text;
