//! `rabbitmq/definitions.json` (imported by the compose broker and by
//! `scripts/services`) must create what `proto::topology` declares: the same
//! queues with the same arguments (or RabbitMQ refuses a service's
//! redeclaration), the delivery-limit policy, the services' permissions, and
//! the fanout exchange replica totalers' queues are bound to.

use proto::topology::{
    self, Argument, DEAD_LETTER_LIMIT_POLICY, DEFAULT_QUEUE, DELIVERY_LIMIT, DELIVERY_LIMIT_POLICY,
};
use serde_json::{Value, json};

fn definitions() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../rabbitmq/definitions.json");
    let text = std::fs::read_to_string(path).expect("read rabbitmq/definitions.json");
    serde_json::from_str(&text).expect("definitions.json is JSON")
}

#[test]
fn definitions_declare_the_queues_of_the_topology() {
    let definitions = definitions();
    let declared = definitions["queues"].as_array().expect("a queues list");
    let expected = topology::queues(DEFAULT_QUEUE);
    assert_eq!(declared.len(), expected.len(), "{declared:?}");
    for spec in expected {
        let queue = declared
            .iter()
            .find(|q| q["name"] == spec.name.as_str())
            .unwrap_or_else(|| panic!("{} is not in definitions.json", spec.name));
        assert_eq!(queue["vhost"], "/");
        assert_eq!(queue["durable"], true, "{}", spec.name);
        assert_eq!(queue["auto_delete"], false, "{}", spec.name);
        let arguments: serde_json::Map<String, Value> = spec
            .arguments
            .iter()
            .map(|(name, value)| {
                let value = match value {
                    Argument::Text(text) => json!(text),
                    Argument::Integer(n) => json!(n),
                    Argument::Boolean(b) => json!(b),
                };
                ((*name).to_owned(), value)
            })
            .collect();
        assert_eq!(
            queue["arguments"],
            Value::Object(arguments),
            "arguments of {}",
            spec.name
        );
    }
}

#[test]
fn definitions_lift_the_delivery_limit_with_a_policy_too() {
    let dead = topology::dead_letter_queue(DEFAULT_QUEUE);
    let definitions = definitions();
    let policies = definitions["policies"].as_array().expect("a policies list");
    for (name, queue) in [
        (DELIVERY_LIMIT_POLICY, DEFAULT_QUEUE),
        (DEAD_LETTER_LIMIT_POLICY, dead.as_str()),
    ] {
        let policy = policies
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("the {name} policy"));
        assert_eq!(policy["vhost"], "/");
        assert_eq!(policy["pattern"], topology::queue_pattern(queue));
        assert_eq!(policy["apply-to"], "queues");
        assert_eq!(
            policy["definition"],
            json!({ "delivery-limit": DELIVERY_LIMIT })
        );
    }
}

#[test]
fn definitions_give_the_services_exactly_their_rights() {
    let definitions = definitions();
    let permissions = definitions["permissions"]
        .as_array()
        .expect("a permissions list");
    let of = |user: &str| {
        let p = permissions
            .iter()
            .find(|p| p["user"] == user)
            .unwrap_or_else(|| panic!("no permissions for {user}"));
        assert_eq!(p["vhost"], "/");
        topology::Permissions {
            configure: p["configure"].as_str().expect("configure").to_owned(),
            write: p["write"].as_str().expect("write").to_owned(),
            read: p["read"].as_str().expect("read").to_owned(),
        }
    };
    assert_eq!(of("${RABBITMQ_ADDER_USER}"), topology::adder_permissions());
    assert_eq!(
        of("${RABBITMQ_TOTALER_USER}"),
        topology::totaler_permissions(DEFAULT_QUEUE)
    );
    let users = definitions["users"].as_array().expect("a users list");
    for user in users {
        let name = user["name"].as_str().expect("a name");
        assert!(
            name.starts_with("${"),
            "user {name} is not from the environment"
        );
        assert!(
            user["password"]
                .as_str()
                .expect("a password")
                .starts_with("${"),
            "{name}"
        );
    }
}

#[test]
fn definitions_bind_the_queue_to_the_fanout_exchange_for_replicas() {
    let definitions = definitions();
    let exchanges = definitions["exchanges"]
        .as_array()
        .expect("an exchanges list");
    let exchange = exchanges
        .iter()
        .find(|e| e["name"] == topology::FANOUT_EXCHANGE)
        .expect("the fanout exchange is declared");
    assert_eq!(
        (&exchange["type"], &exchange["durable"]),
        (&json!("fanout"), &json!(true))
    );
    let bindings = definitions["bindings"].as_array().expect("a bindings list");
    assert!(
        bindings
            .iter()
            .any(|b| b["source"] == topology::FANOUT_EXCHANGE
                && b["destination"] == DEFAULT_QUEUE
                && b["destination_type"] == "queue"),
        "{DEFAULT_QUEUE} is bound to {}: {bindings:?}",
        topology::FANOUT_EXCHANGE
    );
}
