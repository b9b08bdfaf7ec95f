"""Header and message transforms: what meta1py adds to or builds from a message.

Every header meta1py writes and every message it generates is built here, as pure functions (bytes
and strings in, bytes out; no sockets, no trio), whichever process then writes the result:

* :mod:`meta1py.message.received`: the ``Received:`` trace header smtps prepends (RFC 5321 §4.4);
* :mod:`meta1py.message.delivered_to`: ``Delivered-To:`` for local delivery, and the loop check
  on it (smtpc's Maildir delivery);
* :mod:`meta1py.message.return_path`: ``Return-Path:`` (RFC 5321 §4.4), for the final delivery;
* :mod:`meta1py.message.dsn`: delivery status notifications (RFC 3464): bounces, delay warnings
  and success reports (qmgr);
* later: DKIM signing and ``Authentication-Results:``.
"""
