"""What the tests share besides fixtures: waiting with a deadline, servers and their processes,
the database, a server's figures and metrics, Proca's rows, certificates, recorded streams, and
HTTP requests and streams to the HTTP port."""
