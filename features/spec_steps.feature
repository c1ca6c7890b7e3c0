@mutating @spec
Feature: Biscayne's spec steps 3 and 4: Caddy routing, clone and catch-up
  Spec step 3 of the seed claims that adding a second healthy backend makes traffic shift without a
  configuration change. Under `lb_policy first` it does not (design trap 2): traffic moves only when the
  first upstream becomes unavailable or the order changes. Spec step 4: the idle colour starts from a
  copy-on-write clone, behind the cluster, and catches up until healthy.

  @proof
  Scenario: A clone of the live ledger starts behind, catches up, and takes no traffic while green is up
    Given a prober sending JSON-RPC getSlot and GET /health through the ingress at 100 requests/s
    And the storage facts of the live colour's data
    When the agave upgrade runs to the target version and stops after "catch-up"
    Then the idle colour runs from a copy-on-write clone of the live colour's snapshot
    And the idle colour was behind the cluster before it caught up
    And the idle colour answers "ok" on the target version beside the live colour
    And every request was served by the live colour
    And the prober saw no failed request
    And the live colour's data is untouched
