@mutating @hardfork
Feature: Hard fork of a Sei node set through a bootstrap Job (seeds 001 and 002)
  A Sei node set runs as a StatefulSet per revision, one data volume per pod, behind a Service whose selector
  pins a revision. Governance has put an upgrade plan on chain at height H: a binary without the plan's
  handler cannot process H. The upgrade creates the entrant revision's volumes and, for each pod, a bootstrap
  Job that restores a snapshot with the incumbents' binary and halts at H-1; then a StatefulSet on the new
  binary adopts the volumes and processes H (its upgrade handler runs). Only then does the Service switch to
  the entrants, and only after the switch are the incumbents torn down. A bootstrap that cannot run fails the
  plan at once; a new binary that never becomes Running is caught by a deadline counted from the chain
  reaching H (a crash loop cannot reset it); a chain still below H is a wait, shown with an ETA.

  @operator
  Scenario: The operator upgrades the node set across the hard fork with no failed request
    Given the Sei node set behind its Service
    And the chain's upgrade plan for the new version
    And a prober reading the node's status through the Service at 20 requests/s
    When the operator runs the hard fork to the new version
    Then every step of the hard fork passed
    And the entrants bootstrapped on the incumbent binary to H-1 and processed H on the new binary
    And the incumbents were untouched until the teardown, and are gone
    And the Service was never without a ready endpoint
    And no request through the Service failed

  @proof
  Scenario Outline: A bootstrap that cannot run fails the plan at once, the incumbents serving
    Given the Sei node set behind its Service
    And an upgrade plan on chain for v6.4.0 in 150 blocks
    And a prober reading the node's status through the Service at 20 requests/s
    When the operator runs the hard fork to v6.4.0 with <setting>
    Then the hard fork failed at await-running naming <reason> within 25s, and was rolled back
    And the entrant's objects are gone and the incumbents untouched, still behind the Service
    And no request through the Service failed

    Examples:
      | setting                                                | reason           |
      | the bootstrap image sei:v6.3.0-missing                 | ImagePullBackOff |
      | state sync from the peer sei-nowhere.agave.svc:26657   | exited 1         |

  @proof
  Scenario: A new binary that panics at H is caught by AwaitRunning's deadline and rolled back
    Given the Sei node set behind its Service
    And an upgrade plan on chain for v6.4.0 in 60 blocks
    And a prober reading the node's status through the Service at 20 requests/s
    When the operator runs the hard fork to v6.4.0-panic-at-upgrade
    Then the hard fork failed at await-running naming deadline by the running deadline, and was rolled back
    And the entrant's objects are gone and the incumbents untouched, still behind the Service
    And no request through the Service failed

  @proof
  Scenario: A chain not yet at H is a wait with an ETA, not a failure
    Given the Sei node set behind its Service
    And an upgrade plan on chain for v6.4.0 in 150 blocks
    When the operator runs the hard fork to v6.4.0
    Then every step of the hard fork passed
    And the run showed its progress toward H with an ETA while the chain was below it
    And the entrants bootstrapped on the incumbent binary to H-1 and processed H on the new binary

  @proof
  Scenario: An interrupted hard fork resumes where it stopped
    Given the Sei node set behind its Service
    And an upgrade plan on chain for v6.4.0 in 60 blocks
    And a prober reading the node's status through the Service at 20 requests/s
    When the operator runs the hard fork to v6.4.0, interrupted after await-running
    Then the run stopped with the Service still on the incumbents
    When the operator runs the same hard fork again
    Then the second run went on from switch-traffic, skipping what was done
    And the incumbents were untouched until the teardown, and are gone
    And no request through the Service failed
