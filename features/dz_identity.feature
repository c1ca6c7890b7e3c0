@readonly @doublezero
Feature: DoubleZero identity (spec step 1)
  The doublezerod sidecar must run biscayne's registered DoubleZero identity, hold a BGP session to the
  expected device, and be the only doublezerod: a host systemd daemon or a leftover DaemonSet running
  beside it would contend for the same tunnel.

  Scenario: The sidecar runs the registered identity, is connected, and is the only doublezerod
    Given the live colour's running pod
    When the doublezerod sidecar is asked for its address
    Then the address is the expected DoubleZero identity
    When the doublezerod sidecar is asked for its status
    Then the status shows "BGP Session Up" on the expected device
    And no doublezerod runs on the host outside the pod
    And the host's doublezerod service is stopped and disabled
