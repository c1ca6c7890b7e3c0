@mutating @rollback
Feature: Rolling the agave upgrade back, before and after its cleanup
  Before cleanup the live colour was never touched: the idle colour's deployment, its clone and the
  snapshot go. After cleanup the old colour's data is rolled back to the pre-upgrade snapshot and it is
  redeployed with its old version; once caught up, the new colour is stopped gracefully.

  @proof
  Scenario: Rolling back before cleanup leaves the live colour as it was
    Given a prober sending JSON-RPC getSlot and GET /health through the ingress at 150 requests/s
    And the storage facts of the live colour's data
    When the agave upgrade runs to the target version and stops after "catch-up"
    And the upgrade is rolled back
    Then the idle colour's deployment, clone and accounts copy are gone
    And the live colour serves on its old version
    And the prober saw no failed request
    And the live colour's data is untouched

  @proof
  Scenario: Rolling back after cleanup brings the old colour back on its old data and version
    Given a prober sending JSON-RPC getSlot and GET /health through the ingress at 150 requests/s
    When the agave upgrade runs to the target version
    And the upgrade is rolled back
    Then the old colour serves on its old version
    And the old colour's Deployment is the object saved before the upgrade, exactly
    And the idle colour's deployment, clone and accounts copy are gone
    And the prober saw no failed request
