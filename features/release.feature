@mutating @release
Feature: Blue-green release with automatic rollback and a release history (seed 003)
  An application of two services, storage and schema, runs as one colour: a Deployment, a ConfigMap and a
  Service each. Its clients (the gateway) read a common ConfigMap naming the active colour's Services. A
  release deploys the other colour beside it, waits until every Deployment is ready and has stayed ready for
  the grace period, points the common ConfigMap at the new colour, waits until every client has loaded it,
  then deletes the old colour. The state and the last 10 releases are kept in the cluster, so a run resumes
  where the last one stopped. A new colour that cannot start (an image that cannot be pulled, a crash loop)
  is rolled back before any client sees it, within a deadline no crash restarts.

  @operator
  Scenario: The operator releases a new version to the other colour with no failed request
    Given the application's active release
    And a prober reading storage and schema through the gateway at 40 requests/s
    When the operator releases the new version
    Then every step of the release passed
    And the new version is active on the other colour and the old colour is gone
    And the history gained the new version Active, the one before it Superseded
    And the switch came after the new colour had been ready for the grace period
    And no request through the gateway failed

  @proof
  Scenario Outline: A new colour that cannot start is rolled back automatically within the deadline
    Given release 1.0.0 is active on blue
    And a prober reading storage and schema through the gateway at 40 requests/s
    When the operator releases 1.1.0 with storage at <tag>
    Then the release failed at await-ready naming <reason> within the ready deadline, and was rolled back
    And green is gone and blue is untouched and still active
    And the release history reads "1.0.0 Active, 1.1.0 Failed"
    And no request through the gateway failed

    Examples:
      | tag           | reason           |
      | 9.9.9-missing | ImagePullBackOff |
      | 1.1.0-crash   | crash loop       |

  @proof
  Scenario: The operator rolls back to a version two releases back
    Given release 1.0.0 is active on blue
    And releases 1.1.0 and 1.2.0 were made after it
    And a prober reading storage and schema through the gateway at 40 requests/s
    When the operator rolls back to 1.0.0
    Then every step of the release passed
    And 1.0.0 is active on green and blue is gone
    And the release history reads "1.0.0 Superseded, 1.1.0 Superseded, 1.2.0 Superseded, 1.0.0 Active"
    And no request through the gateway failed

  @proof
  Scenario: An eleventh release drops the oldest record
    Given release 1.0.0 is active on blue
    And 9 older releases are recorded before it
    When the operator releases 1.1.0
    Then every step of the release passed
    And the release history reads "0.2.0 Superseded, 0.3.0 Superseded, 0.4.0 Superseded, 0.5.0 Superseded, 0.6.0 Superseded, 0.7.0 Superseded, 0.8.0 Superseded, 0.9.0 Superseded, 1.0.0 Superseded, 1.1.0 Active"

  @proof
  Scenario: An interrupted release resumes at the state it reached
    Given release 1.0.0 is active on blue
    And a prober reading storage and schema through the gateway at 40 requests/s
    When the operator releases 1.1.0, interrupted after await-ready
    Then the run stopped with the release at phase Switching
    When the operator runs the same release again, from another machine
    Then the second run went on from switch, without repeating what was done
    And 1.1.0 is active on green and blue is gone
    And no request through the gateway failed

