"""Test mode (docs/testmode.md): what smtps, smtpc and qmgr share when CI pipelines drive the MTA.

* :mod:`meta1py.testmode.scripts`: scripted replies (the rules, their JSON form, which rule
  answers an event), sans-IO; ``ScriptSource`` re-reads the active rules when their file changes.
* :mod:`meta1py.testmode.capture`: the store of captured deliveries (smtpc writes, qmgr's control
  API reads).
* :mod:`meta1py.testmode.zone`: the fake DNS of ``test_mode { zone_file }`` (smar answers from it;
  mcp checks the file before it starts).

The files live in ``<queue_directory>/test/`` (`meta1py.contract.test_directory`).
"""
