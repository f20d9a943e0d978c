"""The provincial PKI: root and issuing CAs, device and IOC certificates, CRLs, chain checks.

Pure cores: ``algorithms``, ``profiles``, ``certs``, ``chain``, ``show``. Files: ``keys``
(0600 key files, PEM/DER loading), ``castore`` (a CA directory), ``request`` (on the
device). ``throwaway`` builds a whole PKI for demos and tests; ``cli`` is ``urbanedge pki``.
"""
