@mutating @upgrade
Feature: agave version upgrade, blue-green, with zero dropped requests (procedure 2, spec step 5)
  The idle colour is deployed from a copy-on-write clone of the live ledger with the target version, and
  traffic moves only once it is caught up: the live colour is stopped gracefully while Caddy's passive
  health checks and retries carry every request, GET and JSON-RPC POST, to the new colour. A prober
  sends what RPC clients send through the public ingress for the whole run and records every answer; a
  `behind` or stale answer counts as a failure.

  @operator
  Scenario: The whole upgrade drops no request and never serves a node that is behind
    Given a prober sending JSON-RPC getSlot and GET /health through the ingress at 150 requests/s
    And the storage facts of the live colour's data
    And a sampler of the doublezerod daemons, the BGP session's holder and doublezero0's routes
    When the agave upgrade runs to the target version, keeping or destroying the old data as the operator chose
    Then every step of the upgrade completed
    And the prober saw no failed request, none answered by a node that is behind
    And the live colour served until the shift and the new colour after it
    And the new colour serves on its target version
    And the new colour's Deployment is the old colour's live object except for what blue-green changes
    And the old colour's data is untouched, unless the operator chose to destroy it with its snapshot
    And one doublezerod held the identity at a time, its session reset only at the handover, doublezero0's routes stayed, and the new colour's sidecar holds the session

  @proof
  Scenario: A new version that never catches up is rolled back automatically, with nothing dropped
    Given a prober sending JSON-RPC getSlot and GET /health through the ingress at 150 requests/s
    And the storage facts of the live colour's data
    When the agave upgrade runs to "v2.2.1-stuck", a build that never catches up, with a catch-up deadline of 12 seconds
    Then the upgrade failed and was rolled back automatically
    And the idle colour's deployment, clone and accounts copy are gone
    And the live colour serves on its old version
    And the prober saw no failed request
    And the live colour's data is untouched

  @proof
  Scenario: The operator chooses to destroy the old colour's data at cleanup
    Given a prober sending JSON-RPC getSlot and GET /health through the ingress at 150 requests/s
    When the agave upgrade runs to the target version, destroying the old data at cleanup
    Then every step of the upgrade completed
    And the prober saw no failed request
    And the new colour serves on its target version
    And the old colour's data and the pre-upgrade snapshot are gone
    And rolling back is refused because the old data is gone
