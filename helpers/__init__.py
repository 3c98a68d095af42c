"""helpers: the course's one installed package.

Modules, each named for what it holds:

- ``caps``       capabilities detected once (live capture, namespaces, tshark, raw sockets)
- ``capture``    tcpdump on lo or in a namespace, with replay from the corpus
- ``servers``    loopback servers and clients as context managers
- ``netns``      private network namespaces for experiments that change sysctls
- ``dissect``    pcap -> pandas DataFrame of TCP segments; pyshark expert analysis; scapy
                 (front door of ``pcapfile`` reader, ``segtable`` table, ``wireshark`` bridge)
- ``rules``      the kernel's rules evaluated on this machine (Machine snapshot, predictions)
- ``profiles``   kernel profiles the test command can run the suite under
- ``recorder``   record and verify the corpus
- ``kernel``     ss snapshots, nstat deltas, TCP_INFO, sockstat, sysctl reads
- ``plots``      the course style, ladder diagrams, time-sequence graphs
- ``widgets``    experiment panels
- ``checks``     exercise checkers that print a clear pass/fail with the reason
- ``corpus``     the manifest and hash-checked reads of recorded files (replay)
- ``experiments`` one module per chapter topic
"""
__version__ = "0.1.0"
