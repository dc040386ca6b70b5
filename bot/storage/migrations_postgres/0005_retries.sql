-- Which job a Retry made from this one (0 while it is being made): at most one, however
-- many times and by however many members Retry is pressed.
ALTER TABLE jobs ADD COLUMN retried_by BIGINT;
