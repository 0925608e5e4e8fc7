//! The retry budget: a share of requests plus a floor, over a sliding window.

use std::time::Duration;

use conc_retry::{BudgetError, RetryBudget};

#[tokio::test(start_paused = true)]
async fn the_floor_allows_retries_without_traffic_and_deposits_expire() {
    let budget = RetryBudget::new(Duration::from_secs(2), 3, 0.1).unwrap();
    // No traffic: the floor of 3 per second over 2 s.
    assert_eq!(budget.balance(), 6);
    assert_eq!((0..10).filter(|_| budget.try_withdraw()).count(), 6);
    assert!(!budget.try_withdraw());
    for _ in 0..100 {
        budget.deposit();
    }
    assert_eq!(budget.balance(), 10, "10% of 100, the floor already spent");
    tokio::time::advance(Duration::from_secs(3)).await;
    assert_eq!(
        budget.balance(),
        6,
        "deposits and withdrawals older than the ttl expire"
    );
}

#[test]
fn bad_budgets_are_typed_errors() {
    assert!(matches!(
        RetryBudget::new(Duration::from_millis(10), 1, 0.1),
        Err(BudgetError::BadTtl(_))
    ));
    assert!(matches!(
        RetryBudget::new(Duration::from_secs(5), 1, -1.0),
        Err(BudgetError::BadPercent(_))
    ));
}
