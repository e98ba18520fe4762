//! A message returned to its queue more often than RabbitMQ 4.0's default
//! delivery limit (20) must stay queued, never be dead-lettered: a totaler
//! that cannot write its ledger crash-loops and returns it every time. Each
//! return is either a consumer whose channel closes without an ack, or a
//! nack with requeue.

use std::time::Duration;

use futures_util::StreamExt;
use lapin::{
    Connection,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
        QueueDeclareOptions,
    },
    types::FieldTable,
};
use proto::topology::{
    self, Argument, DEAD_LETTER_LIMIT_POLICY, DELIVERY_LIMIT, DELIVERY_LIMIT_POLICY,
};

use crate::support::{self, Broker};

/// More returns than 4.0's default limit of 20.
const RETURNS: usize = 25;

const BODY: &[u8] =
    br#"{"source":"141f9dbd-afe7-403d-8ec6-774ae42c4254","published_us":1,"sums":[[1,42,1]]}"#;

#[tokio::test]
async fn sum_returned_25_times_stays_queued_on_rabbitmq_3() {
    stays_queued_after_returns(&support::broker3(), "3.").await;
}

#[tokio::test]
async fn sum_returned_25_times_stays_queued_on_rabbitmq_4() {
    stays_queued_after_returns(&support::broker4(), "4.").await;
}

/// The queue as it was declared before the delivery limit was lifted: on 4.0
/// the 21st return dead-letters the sum. This is the bug the tests above
/// catch, and proof that they would catch it.
#[tokio::test]
async fn queue_without_the_limit_argument_dead_letters_on_rabbitmq_4() {
    let broker = support::broker4();
    let connection = broker.connect().await;
    let queue = support::unique_queue("old_topology");
    declare_without_limit(&connection, &queue).await;
    let channel = connection.create_channel().await.expect("channel");
    assert!(
        support::publish(&channel, &queue, BODY)
            .await
            .expect("publish")
    );
    let returned = return_repeatedly(&connection, &queue).await;
    assert_eq!(
        returned, 21,
        "4.0 dead-letters at the 21st return by default"
    );
    let dead = topology::dead_letter_queue(&queue);
    assert_eq!(support::count(&connection, &dead).await, 1, "dead-lettered");
    support::delete_topology(&connection, &queue).await;
}

/// The upgrade path: a queue created without `x-delivery-limit` gets the
/// limit lifted by the policy, on both major versions.
#[tokio::test]
async fn policy_lifts_the_limit_of_an_existing_queue_on_rabbitmq_3_and_4() {
    for broker in [support::broker3(), support::broker4()] {
        let connection = broker.connect().await;
        let queue = support::unique_queue("policy");
        declare_without_limit(&connection, &queue).await;
        let policy = format!("{DELIVERY_LIMIT_POLICY}-{queue}");
        let definition = serde_json::json!({ "delivery-limit": DELIVERY_LIMIT });
        broker.set_policy(&policy, &queue, definition).await;
        publish_and_check_after_returns(&connection, &queue).await;
        broker.clear_policy(&policy).await;
        support::delete_topology(&connection, &queue).await;
    }
}

/// Nothing consumes `<queue>.dead`, but an operator looks at it (`totaler
/// dlq list` takes each message and returns it). It has no dead-letter
/// exchange of its own, so on 4.0 its default limit of 20 would drop a dead
/// letter at the 21st look: its limit is lifted too.
#[tokio::test]
async fn dead_letter_returned_25_times_stays_in_its_queue_on_rabbitmq_3_and_4() {
    for broker in [support::broker3(), support::broker4()] {
        let connection = broker.connect().await;
        let queue = support::unique_queue("dead_limit");
        let channel = connection.create_channel().await.expect("channel");
        topology::declare(&channel, &queue).await.expect("declare");
        dead_letter_stays_after_returns(&connection, &queue).await;
        support::delete_topology(&connection, &queue).await;
    }
}

/// The upgrade path for a `<queue>.dead` created without the argument:
/// the dead-letter queue's own policy.
#[tokio::test]
async fn policy_lifts_the_limit_of_an_existing_dead_letter_queue_on_rabbitmq_3_and_4() {
    for broker in [support::broker3(), support::broker4()] {
        let connection = broker.connect().await;
        let queue = support::unique_queue("dead_policy");
        declare_without_limit(&connection, &queue).await;
        let dead = topology::dead_letter_queue(&queue);
        let policy = format!("{DEAD_LETTER_LIMIT_POLICY}-{queue}");
        let definition = serde_json::json!({ "delivery-limit": DELIVERY_LIMIT });
        broker.set_policy(&policy, &dead, definition).await;
        dead_letter_stays_after_returns(&connection, &queue).await;
        broker.clear_policy(&policy).await;
        support::delete_topology(&connection, &queue).await;
    }
}

async fn dead_letter_stays_after_returns(connection: &Connection, queue: &str) {
    let dead = topology::dead_letter_queue(queue);
    let channel = connection.create_channel().await.expect("channel");
    assert!(
        support::publish(&channel, &dead, BODY)
            .await
            .expect("publish")
    );
    let returned = return_repeatedly(connection, &dead).await;
    assert_eq!(
        returned, RETURNS,
        "the dead letter vanished after {returned} returns"
    );
    let channel = connection.create_channel().await.expect("channel");
    assert!(
        take_and_nack(&channel, &dead).await,
        "the dead letter is still there"
    );
}

async fn stays_queued_after_returns(broker: &Broker, major: &str) {
    let version = broker.version().await;
    assert!(
        version.starts_with(major),
        "expected RabbitMQ {major}x, got {version}"
    );
    let connection = broker.connect().await;
    let queue = support::unique_queue("delivery_limit");
    let channel = connection.create_channel().await.expect("channel");
    topology::declare(&channel, &queue).await.expect("declare");
    publish_and_check_after_returns(&connection, &queue).await;
    support::delete_topology(&connection, &queue).await;
}

async fn publish_and_check_after_returns(connection: &Connection, queue: &str) {
    let channel = connection.create_channel().await.expect("channel");
    assert!(
        support::publish(&channel, queue, BODY)
            .await
            .expect("publish")
    );
    let returned = return_repeatedly(connection, queue).await;
    assert_eq!(
        returned, RETURNS,
        "the sum vanished after {returned} returns"
    );
    let dead = topology::dead_letter_queue(queue);
    assert_eq!(
        support::count(connection, &dead).await,
        0,
        "nothing dead-lettered"
    );
    let delivery = take_one(&channel, queue)
        .await
        .expect("the sum is still queued");
    assert_eq!(delivery.data, BODY);
    delivery.ack(BasicAckOptions::default()).await.expect("ack");
}

/// Takes the queue's one message and returns it, up to [`RETURNS`] times;
/// answers how many times it was there to take.
async fn return_repeatedly(connection: &Connection, queue: &str) -> usize {
    for taken in 0..RETURNS {
        let channel = connection.create_channel().await.expect("channel");
        if taken % 2 == 0 {
            // Taken and held unacked: the close below returns it.
            if take_one(&channel, queue).await.is_none() {
                return taken;
            }
        } else if !take_and_nack(&channel, queue).await {
            return taken;
        }
        // Closing the channel returns what it holds unacked.
        channel.close(200, "return it".into()).await.expect("close");
    }
    RETURNS
}

/// Takes one message through a consumer (RabbitMQ refuses `basic.get` on
/// a queue with a single active consumer) and nacks it with requeue,
/// waiting up to 5 s for a return in flight.
async fn take_and_nack(channel: &lapin::Channel, queue: &str) -> bool {
    let Some(delivery) = take_one(channel, queue).await else {
        return false;
    };
    let requeue = BasicNackOptions {
        requeue: true,
        ..BasicNackOptions::default()
    };
    delivery.nack(requeue).await.expect("nack");
    true
}

/// The next message of `queue` through a consumer with prefetch 1, or
/// `None` after 5 s.
async fn take_one(channel: &lapin::Channel, queue: &str) -> Option<lapin::message::Delivery> {
    channel
        .basic_qos(1, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    match tokio::time::timeout(Duration::from_secs(5), consumer.next()).await {
        Ok(Some(delivery)) => Some(delivery.expect("delivery")),
        _ => None,
    }
}

/// Declares `queue` as `topology` did before `x-delivery-limit`.
async fn declare_without_limit(connection: &Connection, queue: &str) {
    let channel = connection.create_channel().await.expect("channel");
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    for mut spec in topology::queues(queue) {
        spec.arguments
            .retain(|(name, _)| *name != "x-delivery-limit");
        assert!(
            spec.arguments
                .iter()
                .all(|(_, v)| !matches!(v, Argument::Integer(_)))
        );
        channel
            .queue_declare(spec.name.as_str().into(), durable, spec.field_table())
            .await
            .expect("declare the old topology");
    }
}

/// Why existing queues get the policy rather than the argument: a queue
/// created without `x-delivery-limit` refuses the new declaration (and a new
/// queue the old one) with PRECONDITION_FAILED, on both major versions.
#[tokio::test]
async fn existing_queue_refuses_a_declaration_with_other_limit_arguments() {
    for broker in [support::broker3(), support::broker4()] {
        let connection = broker.connect().await;
        let queue = support::unique_queue("redeclare");
        declare_without_limit(&connection, &queue).await;
        let channel = connection.create_channel().await.expect("channel");
        let error = topology::declare(&channel, &queue)
            .await
            .expect_err("refused");
        assert!(
            format!("{error:?}").contains("PRECONDITIONFAILED"),
            "{error:?}"
        );
        support::delete_topology(&connection, &queue).await;
    }
}
