"""A card preview (``hfs-cds preview``): send a hook request and show the cards as an EHR would.

* :mod:`.send` sends the request in process (through the app factory, with a throwaway database)
  or to a running service (with a JWT, as an EHR would);
* :mod:`.markdown` renders card markdown safely (CommonMark + tables, raw HTML shown as text);
* :mod:`.html` lays the cards out as a self-contained HTML page;
* :mod:`.text` lays them out as plain text for the terminal;
* :mod:`.command` is the command.

The card text is untrusted input here: a service (this one, or another at ``--service``) wrote it.
"""
