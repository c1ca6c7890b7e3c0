@mutating @release
Feature: A first release that fails (seed 003)
  With no colour live there is nothing to roll back to: the seed marks the release Failed and waits for the
  operator, leaving what it created for them to see.

  @proof
  Scenario: A failed first deployment is Failed, with no rollback attempted
    Given no release has been made
    When the operator releases 1.0.0 with storage at 9.9.9-missing
    Then the first release 1.0.0 is Failed on blue with nothing rolled back
