-- Each login's space: the Matrix space that gathers the login's portals, created by the bot
-- the first time a portal of the login needs it.
ALTER TABLE mx_user_login ADD COLUMN space_room TEXT;
