"""The operator CLI (``restate-recovery``): ``main`` holds the commands, ``remote`` the client of
the operator API, ``local`` the break-glass in-process runs, ``render`` what is printed."""
